#!/usr/bin/env bash
# mypy --strict of the TensorRT backend against tensorrt-stubs.
# The stubs install bare .pyi files (tensorrt/, tensorrt_bindings/) without a py.typed marker, so mypy skips them
# where they are; copying them into a stub folder on MYPYPATH makes mypy check every TensorRT call against them.
# A few generated signatures in them are not valid Python; scripts/repair_stubs.py loosens just those.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
for package in tensorrt tensorrt_bindings; do
  if ! ls "$site/$package"/*.pyi >/dev/null 2>&1; then
    echo "tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs==10.13.0.35.1" >&2
    exit 1
  fi
  mkdir -p "$stubs/$package"
  cp "$site/$package"/*.pyi "$stubs/$package/"
done
"$PY" scripts/repair_stubs.py "$stubs"/tensorrt/*.pyi "$stubs"/tensorrt_bindings/*.pyi
cat > "$stubs/mypy.ini" <<'INI'
[mypy]
strict = True
follow_imports = silent
ignore_missing_imports = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
INI
MYPYPATH="$stubs" "$PY" -m mypy --config-file "$stubs/mypy.ini" "${@:-trtmix/runtime/tensorrt.py}"
