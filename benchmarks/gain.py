"""Latency-aware ordering: `gain` (kl divergence per ms saved) against `kl` and others, with and without unit groups.

    python benchmarks/gain.py [--models minilm efficientnet-lite0 digits-resnet bert-base resnet-50 mobilenetv2]
                              [--orderings gain kl kl+groups gain+groups random hessian augmented-a]
                              [--runs 20] [--json gain.json] [--workers N | --ray-address auto|HOST:PORT] [--spread]

For each model, `trtmix compile` pipelines (tensorrt flavour, OpenVINO, budgets relative to the all-FP16 plan); an
ordering ending in `+groups` runs with `--groups` (a group of units is one step):

* the per-unit latency model from OpenVINO's per-layer profile of the all-FP16 and all-INT8 builds: units attributed,
  and the relative error of its predictions over every plan this run measured (the search never uses them);
* with groups: each group's profiled saving together against its members' alone;
* each ordering's plans at 25%, 50% and 75% of the units INT8 (with groups: the first step count reaching that
  share): accuracy and latency (ratio to FP32 and to all-FP16);
* the frontier area of each ordering's measured points (latency ÷ all-FP16 against accuracy ÷ all-FP16, in the box
  spanned by all of the model's points; higher is better);
* the search at 99.99%, 99.9% and 99% with each ordering: chosen k and latency ratios.

`bert-base`, `resnet-50` and `mobilenetv2` are the paper's architectures at real size from `trtmix.models.zoo`
(seeded random init, dynamo export, batch 1): their accuracy is fidelity to their own FP32 output, and the Hessian
orderings need a torch source, so they run the ONNX orderings only. The CPU line says which machine this was. Every
number comes from this one run. ``--workers`` / ``--ray-address`` score the ``kl`` ordering on Ray workers, as
``compile`` does; with ``--spread`` each model's jobs are instead one Ray task per model, holding a host's timing
token and device, so models run side by side on different hosts (one after another on a single CPU host).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from paper import MODELS  # noqa: E402
from zoo import RECIPE, data_args  # noqa: E402

from trtmix.cli.flags import add_parallel_flags, parallel_settings  # noqa: E402
from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.latency import add_predictions, job_group_savings  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.models.zoo import export_as_user, zoo_model  # noqa: E402
from trtmix.parallel.cluster import Cluster, Failure, ParallelSettings  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.runtime import get_backend  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import Budget, hypervolume  # noqa: E402
from trtmix.sensitivity.run import TORCH_METHODS  # noqa: E402

ORDERINGS = ("gain", "kl", "kl+groups", "gain+groups", "random", "hessian", "augmented-a")
FRACTIONS = (0.25, 0.5, 0.75)
BUDGETS = {"99.99%": "0.01%", "99.9%": "0.1%", "99%": "1%"}
REAL = {"bert-base": ("bert", "text"), "resnet-50": ("resnet", "image"), "mobilenetv2": ("mobilenetv2", "image")}
GROUPS = "+groups"


def _config(name: str, folder: Path, orderings: list[str], runs: int,
            parallel: ParallelSettings) -> tuple[str, CompileConfig]:  # fmt: skip
    """The source and the job settings of ``name`` (a real-size zoo graph is exported into ``folder`` first)."""
    bases = [o.removesuffix(GROUPS) for o in orderings]
    common = {"budget": Budget.parse("1%"), "ordering": bases[0], "compare": tuple(bases[1:]), "runs": runs,
              "groups": orderings[0].endswith(GROUPS), "parallel": parallel}  # fmt: skip
    if name in REAL:
        zoo_name, kind = REAL[name]
        path = folder / f"{name}.onnx"
        if not path.exists():
            export_as_user(zoo_model(zoo_name, "real"), path, "dynamo")
        return str(path), CompileConfig(data=RECIPE, metric="cosine" if kind == "text" else "agreement",
                                        data_args=tuple(sorted(data_args(kind, "real").items())), **common)  # fmt: skip
    spec = MODELS[name]
    return spec.source, CompileConfig(data=spec.data, metric=spec.metric, input_names=spec.inputs,
                                      eval_batches=spec.eval_batches, **common)  # fmt: skip


def run_model(name: str, folder: Path, runs: int, orderings: list[str],
              parallel: ParallelSettings = ParallelSettings()) -> dict[str, Any]:  # fmt: skip
    """The sweep, the searches and the latency model's check for one model (two pipelines: without and with groups)."""
    if name in REAL:
        orderings = [o for o in orderings if o.removesuffix(GROUPS) not in TORCH_METHODS]
    records: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"model": name, "sweep": {}, "searches": {}, "ordering_seconds": {}}
    for grouped in (False, True):
        chosen = [o for o in orderings if o.endswith(GROUPS) == grouped]
        if chosen:
            source, config = _config(name, folder, chosen, runs, parallel)
            pipeline = Pipeline(source, folder / name, config)
            try:
                _measure(pipeline, chosen, result, records)
            finally:
                pipeline.close()
    probes = [dict(r) for r in records.values()]
    model = result.pop("latency_model")
    result["latency_model_errors"] = add_predictions(model, probes, result["high_ms"]) if model else None
    result["unattributed"] = model.unattributed if model else None
    result["areas"] = _areas(result["sweep"])
    return result


def _measure(pipeline: Pipeline, orderings: list[str], result: dict[str, Any], records: dict[str, Any]) -> None:
    """One pipeline's share: the baseline, the sweep and the searches of ``orderings``."""
    baseline = pipeline.baseline()
    high_ms, fp32_ms = baseline["all_high"]["latency"]["median_ms"], baseline["fp32"]["latency"]["median_ms"]
    result.update(units=len(pipeline.units), fp32_ms=fp32_ms, high_ms=high_ms, latency_model=pipeline.latency_model())
    if pipeline.groups and result["latency_model"]:
        result["groups"] = job_group_savings(pipeline.driver, pipeline.groups, result["latency_model"])
    for ordering in orderings:
        base = ordering.removesuffix(GROUPS)
        steps = pipeline.orderings.group_order(base)[0] if pipeline.groups else pipeline.order(base)[0]
        members = {g.name: g.members for g in pipeline.groups}
        units = [[u for s in steps[:k] for u in members.get(s, (s,))] for k in range(len(steps) + 1)]
        result["sweep"][ordering] = []
        for fraction in (0.0, *FRACTIONS, 1.0):
            int8 = next(prefix for prefix in units if len(prefix) >= round(fraction * len(pipeline.units)))
            record = pipeline.measure(PrecisionPlan.with_int8(int8))
            records[record["plan_hash"]] = record
            result["sweep"][ordering].append(_point(record, baseline, high_ms, fp32_ms, fraction))
        for budget_name, drop in BUDGETS.items():
            search = pipeline.search(base, baseline["accuracy"], Budget.parse(drop))
            for k in search.probes:
                record = pipeline.journal.get(search.plan_for(k).stable_hash())
                if record:
                    records[record["plan_hash"]] = record
            best = search.best()
            best_k = len(search.plan_for(best.k).int8_units()) if best else None
            result["searches"][f"{ordering} @ {budget_name}"] = {
                "k": best_k, "latency_vs_fp32": best.latency_ms / fp32_ms if best else None,
                "latency_vs_high": best.latency_ms / high_ms if best else None,
                "accuracy": best.relative if best else None, "probes": len(search.probes)}  # fmt: skip
        result["ordering_seconds"][ordering] = pipeline.ordering_seconds(base)


def _point(record: dict[str, Any], baseline: dict[str, Any], high_ms: float, fp32_ms: float, fraction: float) -> dict:
    ms = record["latency"]["median_ms"] if record["status"] == "ok" else None
    return {"fraction": fraction, "k": record["k"], "ms": ms,
            "accuracy": record["accuracy"] / baseline["accuracy"] if record["status"] == "ok" else None,
            "vs_fp32": ms / fp32_ms if ms else None, "vs_high": ms / high_ms if ms else None}  # fmt: skip


def _areas(sweep: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Normalised frontier area of each ordering's points (see the module docstring)."""
    points = {o: [(p["vs_high"], p["accuracy"]) for p in pts if p["ms"]] for o, pts in sweep.items()}
    everything = [point for pts in points.values() for point in pts]
    reference = (max(lat for lat, _ in everything) * 1.001, min(acc for _, acc in everything) - 1e-9)
    box = (reference[0] - min(lat for lat, _ in everything)) * (max(acc for _, acc in everything) - reference[1])
    return {o: hypervolume(pts, reference) / box if box > 0 else float("nan") for o, pts in points.items()}


def markdown(result: dict[str, Any]) -> str:
    """The model's tables."""
    lines = [f"### {result['model']} ({result['units']} units; FP32 {result['fp32_ms']:.2f} ms, all-FP16 "
             f"{result['high_ms']:.2f} ms)", ""]  # fmt: skip
    errors = result["latency_model_errors"] or {}
    lines.append(f"Latency model: {len(result['unattributed'] or [])} units unattributed; predictions off by "
                 f"{errors.get('median_abs', float('nan')):.1%} median, {errors.get('max_abs', float('nan')):.1%} max "
                 f"over {errors.get('probes', 0)} measured plans. Ordering seconds: {result['ordering_seconds']}.")
    if result.get("groups"):
        rows = [g for g in result["groups"] if g["together_ms"] is not None and g["members_alone_ms"] is not None]
        together, alone = sum(g["together_ms"] for g in rows), sum(g["members_alone_ms"] for g in rows)
        lines.append(f"Groups: {len(result['groups'])} of several units; profiled saving together {together:.3f} ms "
                     f"against {alone:.3f} ms for their members alone ({len(rows)} groups fully attributed).")
    lines += ["", "| ordering | INT8 share | k | accuracy (÷ all-FP16) | ms | ÷ FP32 | ÷ all-FP16 |",
              "|---|---|---|---|---|---|---|"]
    for ordering, points in result["sweep"].items():
        for p in points[1:-1]:
            lines.append(f"| {ordering} | {p['fraction']:.0%} | {p['k']} | {_f(p['accuracy'], 5)} | {_f(p['ms'], 2)} | "
                         f"{_f(p['vs_fp32'], 2)} | {_f(p['vs_high'], 2)} |")
    lines += ["", "| ordering | frontier area |", "|---|---|"]
    lines += [f"| {o} | {area:.3f} |" for o, area in result["areas"].items()]
    lines += ["", "| search | k | accuracy | ÷ FP32 | ÷ all-FP16 | probes |", "|---|---|---|---|---|---|"]
    for label, s in result["searches"].items():
        lines.append(f"| {label} | {s['k']} | {_f(s['accuracy'], 5)} | {_f(s['latency_vs_fp32'], 2)} | "
                     f"{_f(s['latency_vs_high'], 2)} | {s['probes']} |")
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _spread(models: list[str], folder: Path, runs: int, orderings: list[str],
            settings: ParallelSettings) -> list[dict[str, Any]]:  # fmt: skip
    """One Ray job per model, side by side across the cluster's hosts (``Cluster.jobs``); each job runs serially.

    The workers import this folder's modules (``paper``, ``zoo``): on a cluster, every host needs this checkout at
    the same path.
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    gpu = get_backend("auto").device == "gpu"  # the jobs' backend: TensorRT where it runs, so a job holds a GPU
    cluster = Cluster(settings)
    try:
        outcomes = cluster.jobs(run_model, [(name, folder, runs, orderings) for name in models], "benchmark jobs", gpu)
    finally:
        cluster.close()
    results = []
    for name, outcome in zip(models, outcomes, strict=True):
        if isinstance(outcome, Failure):
            print(f"{name}: the job was lost twice ({outcome.error})", file=sys.stderr)
            continue
        results.append(outcome)
        print(markdown(outcome) + "\n", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "efficientnet-lite0", "digits-resnet", *REAL],
                        choices=sorted([*MODELS, *REAL]))  # fmt: skip
    parser.add_argument("--orderings", nargs="+", default=list(ORDERINGS),
                        help="orderings to compare; NAME+groups runs NAME with --groups")  # fmt: skip
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    add_parallel_flags(parser)
    parser.add_argument("--spread", action="store_true",
                        help="run each model's jobs as one Ray task holding a host's timing token and device (all its "
                        "cores, or one GPU), side by side across the cluster's hosts; each job runs serially inside. "
                        "Needs --workers or --ray-address")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(cpu_features().describe())
    settings = parallel_settings(args)
    if args.spread and not settings.enabled:
        parser.error("--spread runs the models' jobs on Ray: give --workers N or --ray-address too")
    results = []
    with tempfile.TemporaryDirectory(prefix="trtmix-gain-") as folder:
        if args.spread:
            results = _spread(args.models, Path(folder), args.runs, args.orderings, settings)
        for name in [] if args.spread else args.models:
            print(f"{name}...", file=sys.stderr, flush=True)
            results.append(run_model(name, Path(folder), args.runs, args.orderings, settings))
            print(markdown(results[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
