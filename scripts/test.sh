#!/usr/bin/env bash
# Install what the tests need (scripts/bootstrap.sh), then run the whole suite. Extra arguments go
# to pytest. The end-to-end tests start their own redis-server, moto S3 server, API and workers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
# --durations: the CI log names the slowest tests, to keep the suite under ~30 min on 2 cores.
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=40 "$@"
