#!/usr/bin/env bash
# Every `gpu` and `tensorrt` marked test, on a machine with an NVIDIA GPU, and a short table of the outcomes.
# `gpu` tests need only torch with CUDA (the CUDA-event timer); `tensorrt` tests also need a real TensorRT and skip
# without it, saying so.  Run it from the repository root: scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
report=$(mktemp --suffix=.xml)
trap 'rm -f "$report"' EXIT
"$PY" - <<'PYEOF'
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA available: {cuda}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
try:
    import tensorrt
    print("tensorrt:", getattr(tensorrt, "__version__", "stubs or placeholder only (no Builder)")
          if hasattr(tensorrt, "Builder") else "stubs or placeholder only (no Builder)")
except ImportError:
    print("tensorrt: not installed")
PYEOF
"$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" -rs --junitxml="$report" tests
status=$?
"$PY" - "$report" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET
rows = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = child.tag + (": " + (child.get("message") or "")[:70] if child.tag == "skipped" else "")
    rows.append((case.get("name"), f"{float(case.get('time', 0)):.2f}", outcome))
width = max((len(name) for name, _, _ in rows), default=10)
print(f"\n{'test':<{width}}  {'s':>6}  outcome")
for name, seconds, outcome in rows:
    print(f"{name:<{width}}  {seconds:>6}  {outcome}")
PYEOF
exit $status
