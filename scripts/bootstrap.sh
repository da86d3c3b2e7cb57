#!/usr/bin/env bash
# Create .venv and install layerq with the worker and test extras. Idempotent: does nothing when the
# venv already matches pyproject.toml. torch is pinned to the release that installs without a
# download on the development machines (pip finds it on local disk); set LAYERQ_TORCH_SPEC to change.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${LAYERQ_VENV:-.venv}"
torch_spec="${LAYERQ_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
python="$(command -v python3.11 || command -v python3)"

if ! command -v redis-server >/dev/null 2>&1; then
  # The demo and the tests start private redis-server processes (never touching a shared Redis).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server ..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
      || echo "warning: could not install redis-server; set LAYERQ_REDIS_URL / LAYERQ_TEST_REDIS_URL" >&2
  else
    echo "warning: redis-server not found; set LAYERQ_REDIS_URL / LAYERQ_TEST_REDIS_URL" >&2
  fi
fi

if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  # The web page's browser test (tests/test_web.py) drives Debian's chromium; it skips without it.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver ..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "warning: chromium/chromedriver not found; the browser test will be skipped" >&2
  fi
fi

stamp="$venv/.layerq-installed"
want="$(cat pyproject.toml; echo "$torch_spec")"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(printf '%s' "$want" | sha256sum)" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $torch_spec
"$venv/bin/python" -m pip install -q -e ".[worker,test]"
printf '%s' "$want" | sha256sum > "$stamp"
