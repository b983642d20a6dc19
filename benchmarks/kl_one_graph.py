"""The kl ordering's cost: one switched graph against a compiled graph and session per unit, and their agreement.

    python benchmarks/kl_one_graph.py [--models minilm bert-base] [--exact-units N]

For each model, both scorers score the units on the same 2 calibration batches (the job's ``kl`` setting): seconds,
seconds per unit, and the Spearman rank agreement of the two sets of scores. ``--exact-units N`` limits the exact
scorer to the first N units where it would take too long (BERT-base: ~6 s per unit); agreement is then over those.
MiniLM-L6 is the pretrained model (``trtmix.models.minilm``); BERT-base is ``transformers``' config at seeded random
init (``trtmix.models.zoo``), batch 1 x 128. The ``tensorrt`` flavour, ONNX Runtime, 2 threads. CPU flags printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.calibration.collect import collect_ranges
from trtmix.data.recipes import checked_batches, load_batches
from trtmix.export import export_onnx
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.models.zoo import export_as_user, zoo_model
from trtmix.runtime.cpu import cpu_features
from trtmix.sensitivity.measured import ScoringJob, single_unit_scores

ZOO_RECIPE = str(Path(__file__).resolve().parents[1] / "calib" / "zoo.py")


def prepare(name: str, folder: Path) -> tuple[Path, str, dict[str, str]]:
    """The model's ONNX, its data recipe and the recipe's arguments."""
    if name == "minilm":
        from trtmix.models.minilm import minilm

        model, samples = minilm()
        path = folder / "minilm.onnx"
        export_onnx(model, samples, path, input_names=["input_ids", "attention_mask"])
        return path, "trtmix.models.minilm:load_data", {}
    path = export_as_user(zoo_model("bert", "real"), folder / "bert.onnx", "dynamo")
    return path, ZOO_RECIPE, {"kind": "text", "batch": "1", "sequence": "128", "vocab": "30522", "batches": "4"}


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(values)) for values in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def run(name: str, folder: Path, exact_units: int | None) -> str:
    path, data, data_args = prepare(name, folder)
    model = load_onnx(path)
    units = find_units(model)
    ranges = collect_ranges(path, data, "calibration", CalibrationConfig(), data_args=data_args)
    feeds = list(checked_batches(load_batches(data, "calibration", **data_args), model, limit=2))
    job = ScoringJob(model, units, ranges, "tensorrt", "cosine", feeds)
    start = time.perf_counter()
    switched = single_unit_scores(job, units)
    switched_s = time.perf_counter() - start
    subset = units[:exact_units] if exact_units else units
    start = time.perf_counter()
    exact = single_unit_scores(replace(job, exact=True), subset)
    exact_s = time.perf_counter() - start
    names = [u.name for u in subset]
    rho = spearman([exact[n] for n in names], [switched[n] for n in names])
    exact_values = np.array([exact[n] for n in names])
    gap = np.abs(exact_values - np.array([switched[n] for n in names]))
    return (f"| {name} | {len(units)} | {switched_s:.1f} ({switched_s / len(units):.2f}/unit) | {exact_s:.1f} "
            f"({exact_s / len(subset):.2f}/unit, {len(subset)} units) | {rho:.3f} | "
            f"{exact_values.min():.2e} .. {exact_values.max():.2e} | {np.median(gap):.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--exact-units", type=int, help="score only the first N units exactly")
    args = parser.parse_args()
    print(cpu_features().describe())
    print("| model | units | one graph: s | exact: s | Spearman (exact vs one graph) | exact scores, min .. max | "
          "median abs difference |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="trtmix-kl-") as folder:
        for name in args.models:
            print(f"{name}...", file=sys.stderr, flush=True)
            print(run(name, Path(folder), args.exact_units if name == "bert-base" else None), flush=True)


if __name__ == "__main__":
    main()
