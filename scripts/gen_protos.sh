#!/usr/bin/env bash
# Regenerate the Python code for protos/edgefleet/v1/*.proto in place.
# --check: regenerate into a temporary tree and fail if it differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=protos
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/edgefleet/v1/*.proto
if [[ "${1:-}" == "--check" ]]; then
  status=0
  for f in "$out"/edgefleet/v1/*.py "$out"/edgefleet/v1/*.pyi; do
    rel=${f#"$out"/}
    if ! cmp -s "$f" "protos/$rel"; then
      echo "generated code drifted from the .proto source: protos/$rel (run scripts/gen_protos.sh)" >&2
      status=1
    fi
  done
  for f in protos/edgefleet/v1/*_pb2*.py protos/edgefleet/v1/*_pb2.pyi; do
    rel=${f#protos/}
    [[ -f "$out/$rel" ]] || { echo "stale generated file with no .proto source: $f" >&2; status=1; }
  done
  [[ $status == 0 ]] && echo "protos: generated code matches the .proto sources"
  exit $status
fi
