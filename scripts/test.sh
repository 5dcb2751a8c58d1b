#!/usr/bin/env bash
# The whole suite: install if needed, static checks, start the backing
# services that are not running yet (and stop those again at the end), then
# every test. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] \
   || [ client/pyproject.toml -nt .venv/.installed ]; then
  ./scripts/install.sh
fi
./scripts/lint.sh
mapfile -t started < <(./scripts/services.sh missing)
stop_started() {
  if [ ${#started[@]} -gt 0 ]; then ./scripts/services.sh down "${started[@]}"; fi
}
trap stop_started EXIT
if [ ${#started[@]} -gt 0 ]; then ./scripts/services.sh up "${started[@]}"; fi
export PATH="$PWD/.tools/bin:$PATH"
.venv/bin/python -m pytest "$@"
