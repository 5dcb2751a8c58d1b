#!/usr/bin/env bash
# Regenerate the Python stubs of proto/ into client/metaas/ (committed).
# With --check, fail when the committed stubs differ from the .proto files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=client
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/metaas/v1"
PATH="$PWD/.venv/bin:$PATH" "$PY" -m grpc_tools.protoc -I proto \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  proto/metaas/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  for f in "$out"/metaas/v1/*_pb2*; do
    if ! cmp -s "$f" "client/metaas/v1/$(basename "$f")"; then
      echo "generated code is stale: run 'make proto' and commit client/metaas/v1/$(basename "$f")" >&2
      exit 1
    fi
  done
  echo "generated code matches proto/"
fi
