#!/usr/bin/env bash
# Regenerates server/smart_dispatch/_proto from proto/ (code + mypy stubs). One command: make gen.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
out=server/smart_dispatch/_proto
find "$out" -mindepth 1 -not -name '__init__.py' -delete 2>/dev/null || true
mkdir -p "$out"
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  $(find proto -name '*.proto' | sort)
# protoc emits absolute imports ("from smartdispatch.v1 import ..."); make them package-relative.
find "$out" -name '*.py' -o -name '*.pyi' | while read -r f; do
  sed -i -E 's/^from smartdispatch\.v1 import/from smart_dispatch._proto.smartdispatch.v1 import/; s/^import smartdispatch\.v1\./import smart_dispatch._proto.smartdispatch.v1./' "$f"
done
for d in "$out/smartdispatch" "$out/smartdispatch/v1"; do touch "$d/__init__.py"; done
