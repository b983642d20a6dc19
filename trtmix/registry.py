"""Every name a user can type: calibration methods, orderings, sensitivity methods, flavours, backends, metrics.

One table per kind, name → one-line description.  The modules that implement a kind check their names against it,
argparse takes its ``choices`` from it and the help text lists its descriptions, so a name added here shows up
everywhere at once and a name missing here cannot be typed.  This module imports nothing from trtmix.
"""

from __future__ import annotations

CALIBRATION_METHODS = {
    "max": "the observed min/max",
    "percentile": "the P-th percentile of |x| (--percentile)",
    "entropy": "TensorRT's entropy calibrator: the KL-minimising threshold",
    "mse": "the threshold minimising expected squared error",
}
WEIGHT_METHODS = {
    "max": "per-channel max |w|",
    "mse": "per-channel MSE-clipped amax",
}
METRICS = {
    "agreement": "top-1 agreement with the float model",
    "accuracy": "top-1 against the recipe's load_labels(split)",
    "cosine": "mean cosine to the float outputs over rows of the last axis, for embedding models",
    "sample-cosine": "mean per-sample cosine to the float outputs over the whole output, for dense maps",
    "sequence": "arg-max agreement per position of [batch, positions, classes] outputs (CTC, token classes)",
    "iou": "mean per-sample IoU of the output maps thresholded at 0.5 (segmentation, probability maps)",
    "psnr": "mean per-sample PSNR in dB against the float outputs (images, depth; capped at 100 dB)",
    "mse": "1 - MSE / variance of the float outputs (1 for identical outputs; regression, depth, maps)",
    "auto": "chosen from the scored output's shape and values; the summary says which and why",
}
TORCH_SENSITIVITY = {
    "hessian": "Hutchinson trace of each unit's Hessian times its quantization noise (HAWQ-V2 style)",
    "augmented-a": "hessian, rank-combined with one extra HVP carrying the cross-layer terms",
    "augmented-b": "hessian, rank-combined with measured context: loss(all INT8) - loss(all INT8 but u)",
    "augmented-c": "hessian, rank-combined with interactions between graph neighbours",
}
ONNX_ORDERINGS = {
    "kl": "each unit alone in INT8, measured against the float model",
    "noise": "data-free relative weight quantization noise",
    "random": "a seeded permutation (random-N: seed N)",
}
# Orderings only a compile job can make: they need the engine's per-layer profile of the job's own builds.
JOB_ORDERINGS = {
    "gain": "kl divergence per millisecond the unit saves in INT8 (the engine's per-layer profile): most latency "
    "per unit of accuracy lost first",
}
ORDERINGS = {**ONNX_ORDERINGS, **JOB_ORDERINGS, **TORCH_SENSITIVITY}
SENSITIVITY_METHODS = {**TORCH_SENSITIVITY, **ONNX_ORDERINGS}
FLAVOURS = {
    "tensorrt": "s8 symmetric Q/DQ, float16 graph: what a TensorRT strongly typed build needs",
    "ort-cpu": "u8 activations / s8 per-channel weights, float32 graph: ONNX Runtime's CPU int8 kernels",
}
BACKENDS = {
    "auto": "a real TensorRT when one imports, else OpenVINO for the tensorrt flavour, ONNX Runtime for ort-cpu",
    "tensorrt": "TensorRT on an NVIDIA GPU (needs a TensorRT install)",
    "openvino": "OpenVINO's CPU plugin: builds, times and verifies the tensorrt-flavour graph as it ships",
    "onnxruntime": "ONNX Runtime on the CPU",
}
EXPORTERS = {
    "auto": "dynamo, falling back to legacy if it fails",
    "dynamo": "torch.onnx.export(dynamo=True), opset >= 18",
    "legacy": "the TorchScript exporter",
}


def describe(table: dict[str, str]) -> str:
    """``name: description; ...`` for argparse help texts (``%`` escaped)."""
    return "; ".join(f"{name}: {text}" for name, text in table.items()).replace("%", "%%")


def is_random_ordering(name: str) -> bool:
    """True for ``random-N`` (a random ordering with seed N)."""
    prefix, _, seed = name.partition("-")
    return prefix == "random" and seed.isdigit()


def known_ordering(name: str) -> bool:
    """True for every ordering name ``compile`` accepts."""
    return name in ORDERINGS or is_random_ordering(name)
