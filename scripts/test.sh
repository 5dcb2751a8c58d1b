#!/usr/bin/env bash
# The whole suite: install if needed, static checks, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] \
   || [ client/pyproject.toml -nt .venv/.installed ]; then
  ./scripts/install.sh
fi
./scripts/lint.sh
export PATH="$PWD/.tools/bin:$PATH"
.venv/bin/python -m pytest "$@"
