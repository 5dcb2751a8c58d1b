#!/usr/bin/env bash
# Static checks: ruff, mypy (strict), buf lint, and generated code up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.tools/bin/buf lint
./scripts/gen-proto.sh --check
