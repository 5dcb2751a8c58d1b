#!/usr/bin/env bash
# Create .venv with the project (editable), its dev tools, and the Go tools the
# tests and docs checks use (grpcurl, buf) under .tools/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
GRPCURL_VERSION=v1.9.4
BUF_VERSION=v1.75.0

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e './client[kafka]' -e '.[dev]'

mkdir -p .tools/bin
export GOBIN="$PWD/.tools/bin"
if [ ! -x .tools/bin/grpcurl ]; then
  go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}"
fi
if [ ! -x .tools/bin/buf ]; then
  go install "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}"
fi
# Headless Chromium renders the migration report in its screenshot test.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install Debian's chromium package (the report test needs it)" >&2
  fi
fi
touch .venv/.installed
