#!/usr/bin/env bash
# Set up, start layerq on embedded defaults (tiny model on the CPU, local-disk storage, a private
# redis-server), decompose a generated sample image, print where the layers and exports are, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/layerq demo "$@"
