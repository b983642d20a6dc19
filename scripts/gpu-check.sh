#!/usr/bin/env bash
# The GPU check, on a bare GPU machine: CUDA and torch, nothing of trtmix installed (the working tree alone, on
# PYTHONPATH).  It times 20 us / 100 us / 5 ms kernels and a launch with 300 us of host work through
# trtmix/runtime/cuda_timer.py's time_on_stream against a pipelined reference and prints the table; where a real
# TensorRT (with Polygraphy, onnx and onnx-graphsurgeon) imports, it also builds, inspects and times a tiny strongly
# typed engine from a tensorrt-flavour graph and saves the inspector JSON.  onnx, onnxruntime and openvino are never
# imported unless present.  Files go to $OUT (default gpu-check-out).  Run it from anywhere: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
"$PY" scripts/gpu_check.py
