#!/usr/bin/env bash
# Installs (or finds cached) the real Jira client library that the simulator's
# compatibility suite drives (tests/jira-clients): a Python virtualenv outside
# the checkout, keyed by the pinned `jira` version, with the pinned packages of
# tests/jira-clients/requirements.txt. The venv's python is printed as the
# last line. Without python3 it prints a SKIPPED warning and nothing else.
#
#   RECAC_PYENV_DIR   cache root (default $HOME/.cache/recac/pyenv)
#   PYTHON            interpreter that creates the venv (default python3)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
reqs="$here/tests/jira-clients/requirements.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "SKIPPED: $python not found: the real Jira client suite (tests/jira-clients, crates/recac-jira-sim/tests/real_clients.rs) cannot run" >&2
  exit 0
fi

version="$(sed -n 's/^jira==\([^[:space:]]*\).*/\1/p' "$reqs")"
[ -n "$version" ] || { echo "jira-clients: no jira==<version> pin in $reqs" >&2; exit 1; }
root="${RECAC_PYENV_DIR:-$HOME/.cache/recac/pyenv}"
venv="$root/jira-$version"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv/bin/python"
  exit 0
fi

mkdir -p "$root"
# One installer at a time (make test and a test binary may both ask).
exec 9>"$root/.jira-$version.lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv/bin/python"
  exit 0
fi

echo "jira-clients: creating $venv (jira $version)" >&2
rm -rf "$venv"
if ! "$python" -m venv "$venv" >&2; then
  echo "jira-clients: '$python -m venv' failed; install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
  rm -rf "$venv"
  exit 1
fi
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: -r "$reqs" >&2; then
  echo "jira-clients: pip could not install $reqs (is PyPI reachable?)" >&2
  rm -rf "$venv"
  exit 1
fi
"$venv/bin/python" -c "import jira, sys; sys.exit(jira.__version__ != '$version')" \
  || { echo "jira-clients: the venv does not import jira $version" >&2; exit 1; }
echo "$want" > "$stamp"
echo "$venv/bin/python"
