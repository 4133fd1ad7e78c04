#!/usr/bin/env bash
# The two Quick start commands (README.md):
#   ./dev.sh run    install everything (if pyproject.toml, this file or scripts/schedctl
#                   changed since), then run the daemon with a local agent
#   ./dev.sh test   install everything (likewise), then lint, type-check and run the tests
# Other uses: ./dev.sh install | ./dev.sh lint | ./dev.sh bench
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# What the environment was installed from: when it is unchanged, a start skips pip
# (half a minute of it) and listens within seconds. scripts/schedctl counts too: pip
# copies it into the venv's bin (pyproject's script-files), so an edit to it reaches
# `schedctl` only through an install.
STAMP="$VENV/.installed-from"

wanted() {
  sha256sum pyproject.toml dev.sh scripts/schedctl | sha256sum | cut -d' ' -f1
}

install() {
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(wanted)" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # The pinned torch first (a local CPU wheel on these machines), then the rest.
  "$VENV/bin/python" -m pip install --quiet torch==2.13.0 numpy
  # compat: a plain path in a .pth rather than setuptools' import finder, which site
  # imports at every Python start (pathlib, re...: ~10 ms of each `schedctl`,
  # docs/cli-broker.md).
  "$VENV/bin/python" -m pip install --quiet -e '.[dev,train,sim,hpo]' \
    --config-settings editable_mode=compat
  wanted > "$STAMP"
}

lint() {
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy" schedulerd agent
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  run)
    install
    # Jobs start from a clean environment; the local agent's job PATH puts this venv
    # first, so that a job's `python` has torch and schedulerd.elastic (examples/README.md).
    exec "$VENV/bin/schedulerd" --local-agent --local-router 127.0.0.1:8080 \
      --http-listen 127.0.0.1:9090 "$@"
    ;;
  test)
    install
    lint
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  lint) lint ;;
  bench)
    install
    exec "$VENV/bin/python" bench/decide_bench.py "$@"
    ;;
  *)
    echo "usage: ./dev.sh run | test | install | lint | bench" >&2
    exit 2
    ;;
esac
