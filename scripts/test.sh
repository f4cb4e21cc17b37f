#!/usr/bin/env bash
# Run every test on a fresh Debian machine: installs the system packages the tests need,
# creates .venv, installs tocsin with its dev extras, then runs ruff, mypy and pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tocsin needs Python >= 3.11 (python3 is $(python3 --version))" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
# Real peers for the MQTT and SNMP probe tests (daemons live in /usr/sbin, off a user's PATH).
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
have mosquitto || need_apt+=(mosquitto)
have mosquitto_sub || need_apt+=(mosquitto-clients)
have snmpd || need_apt+=(snmpd)
have snmpget || need_apt+=(snmp)
# The fault-injection tests step the daemon's wall clock with libfaketime.
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need_apt+=(faketime)
# The packaging tests check systemd/ with systemd-analyze and systemd-sysusers (no running
# systemd needed).
{ have systemd-analyze && have systemd-sysusers; } || need_apt+=(systemd)
# The web pages' browser tests (tests/web): Debian's chromium, driven by playwright's Python
# package (no browser download), and npm for axe-core, the accessibility checker they inject.
have chromium || need_apt+=(chromium)
# The store tests marked `engines` run on PostgreSQL too: tests/pg.py makes a throwaway cluster
# with Debian's initdb (as the package's postgres user when run as root).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# axe-core for the accessibility pass, into the checkout's .cache (ignored by git).
if [ ! -f .cache/npm/node_modules/axe-core/axe.min.js ]; then
  npm install --no-audit --no-fund --silent --prefix .cache/npm "axe-core@^4.10" >/dev/null
fi

echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy --strict src"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
