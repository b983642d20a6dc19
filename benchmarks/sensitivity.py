"""Sensitivity cost on 2 CPU cores: Hessian and each inter-layer variant, and how the cost grows with the unit count.

    python benchmarks/sensitivity.py [--models minilm efficientnet] [--scaling]

Default settings (4 calibration batches of 8, at most 20 Hutchinson probes, tol 0.05).  ``hessian`` includes the
traces, the activation term and the single-unit ``kl`` measurement its attention units need is listed apart.
``--scaling`` times MiniLM cut to 1, 2, 3 and 6 encoder layers (8 units per layer) to show the growth.
Target: hessian + variant A for MiniLM-L6 in <= 60 s.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from trtmix import api
from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.data.recipes import checked_batches
from trtmix.export import export_onnx
from trtmix.ir.graph import load_onnx
from trtmix.runtime.cpu import cpu_features
from trtmix.sensitivity.run import SensitivitySettings, compute_sensitivity


def _minilm(layers: int | None = None):  # type: ignore[no-untyped-def]
    from trtmix.models.minilm import load_data, minilm

    model, samples = minilm()
    if layers is not None:
        model.bert.encoder.layer = model.bert.encoder.layer[:layers]
    return model, samples, ["input_ids", "attention_mask"], lambda: load_data("calibration", batches=8), "cosine"


def _efficientnet():  # type: ignore[no-untyped-def]
    from trtmix.models.efficientnet import efficientnet_lite0, load_data

    model, samples = efficientnet_lite0()
    return model, samples, ["input"], lambda: load_data("calibration", batches=8), "agreement"


def run(name: str, build, methods: tuple[str, ...], folder: Path) -> dict:  # type: ignore[no-untyped-def]
    model, samples, names, data, metric = build()
    path = folder / f"{name}.onnx"
    export_onnx(model, samples, path, input_names=names)
    onnx_model = load_onnx(path)
    units = api.list_units(path)
    ranges = api.collect_ranges(path, data(), config=CalibrationConfig(batches=8), progress=False)
    feeds = list(checked_batches(data(), onnx_model, limit=4))
    settings = SensitivitySettings(methods=methods, metric=metric)
    start = time.perf_counter()
    result = compute_sensitivity(onnx_model, units, ranges, feeds, settings, model, progress=False)
    result["wall"] = time.perf_counter() - start
    result["unit_count"] = len(units)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Sensitivity cost per method and scaling with units")
    parser.add_argument("--models", nargs="+", default=["minilm", "efficientnet"], choices=["minilm", "efficientnet"])
    parser.add_argument("--scaling", action="store_true", help="also time MiniLM with 1, 2, 3, 6 layers")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    methods = tuple(args.methods or ("hessian", "augmented-a", "augmented-b", "augmented-c", "kl", "noise", "random"))
    builders = {"minilm": _minilm, "efficientnet": _efficientnet}
    print(cpu_features().describe(), flush=True)
    with tempfile.TemporaryDirectory(prefix="trtmix-sens-bench-") as folder:
        header = ["model".ljust(14), "units", "kl", "hessian", "probes", "s/probe", "A", "B", "C", "H+A", "total"]
        print(" ".join(f"{h:>6}" for h in header) + "  (seconds)")
        for name in args.models:
            _row(name, run(name, builders[name], methods, Path(folder)))
        if args.scaling:
            print("\nscaling (MiniLM cut to N layers): hessian + A, and kl, against the unit count")
            for layers in (1, 2, 3, 6):
                result = run(f"minilm-{layers}", lambda n=layers: _minilm(n), ("augmented-a",), Path(folder))
                timings = result["timings_seconds"]
                hessian_a = timings["hessian"] + timings["a"]
                units, probes = result["unit_count"], int(timings["hessian_probes"])
                per_probe = timings["hessian"] / probes
                print(
                    f"  {layers} layers, {units:>2} units: hessian+A {hessian_a:6.1f} s "
                    f"({probes} probes, {per_probe:.2f} s/probe), kl {timings['kl']:6.1f} s"
                )


def _row(name: str, result: dict) -> None:
    t = result["timings_seconds"]
    probes = int(t.get("hessian_probes", 0))
    per_probe = t["hessian"] / probes if probes else float("nan")
    values = [t.get("kl", float("nan")), t["hessian"]]
    tail = [t.get(k, float("nan")) for k in ("a", "b", "c")] + [t["hessian"] + t.get("a", 0.0), result["wall"]]
    text = (
        " ".join(f"{v:>6.1f}" for v in values)
        + f" {probes:>6} {per_probe:>7.2f} "
        + " ".join(f"{v:>6.1f}" for v in tail)
    )
    print(f"{name:<14} {result['unit_count']:>6} {text}")


if __name__ == "__main__":
    main()
