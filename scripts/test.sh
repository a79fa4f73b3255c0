#!/usr/bin/env bash
# The test command: creates .venv, installs the package with its test extras, installs the
# system packages the tests drive (redis-server, chromium, nginx, nodejs and npm) when missing, and the
# browser client's pinned dev dependencies (npm ci in clients/js) when its node_modules is, then runs pytest.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]} (install them, or run this as root on Debian)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
if [ ! -d clients/js/node_modules ] && command -v npm >/dev/null 2>&1; then
  npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
fi
exec .venv/bin/python -m pytest "$@"
