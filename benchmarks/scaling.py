"""Scaling: what one `trtmix compile` costs in seconds and memory as the model grows, one process per phase.

    python benchmarks/scaling.py [--models minilm bert-base bert-large resnet-50 mlp-2.3gb] [--budgets 1% 0.1%]
                                 [--timeout 1200] [--json s.json] [--workers N | --ray-address auto|HOST:PORT]

Each (model, budget) runs its three phases in three fresh child processes, one after another, with their own empty
calibration cache and output folder, so each phase's peak RSS (``getrusage``) and seconds are its own: the export
(``transformers`` BERT-base and BERT-large from their configs at seeded random init, batch 1 × 128; ResNet-50 batch
1 × 224²; MiniLM-L6 is the pretrained package at its recipe's batch of 8 × 128; ``mlp-2.3gb`` is two MatMuls whose
2.3 GB of weights are over protobuf's limit, written with external data), the calibration, and `compile --max-drop B`
with the defaults (tensorrt flavour on OpenVINO, kl ordering, smoothing measured, bias correction).  Reported per
run: export, calibration, quantizer choice, ordering, and search seconds (with the baselines, the final re-timing,
the latency model's profiles and the outputs), total, builds, each phase's peak RSS, and the cost per unit.  The CPU
line says which machine this was.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trtmix.cli.flags import add_parallel_flags, parallel_settings  # noqa: E402

MODELS = {"minilm": None, "bert-base": ("bert", "real"), "bert-large": ("bert", "large"),
          "resnet-50": ("resnet", "real"), "mlp-2.3gb": None}  # fmt: skip
# mlp-2.3gb: two MatMuls, 4096 → 70000 → 4096 floats (2.29 GB of weights, over protobuf's 2 GiB), batch 1, seeded.
MLP_WIDTH = 70000
MLP_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((1, 4096)).astype(np.float32)}
"""
MINILM_DATA = "trtmix.models.minilm:load_data"
PHASES = ("export", "calibration", "compile")


def child(name: str, budget: str, folder: Path, phase: str, parallel: Any = None) -> dict[str, Any]:
    """One phase of one run, in this process: its seconds, its peak RSS, and what it reports."""
    from zoo import RECIPE, data_args

    from trtmix import api
    from trtmix.calibration.collect import collect_ranges, default_cache_dir
    from trtmix.job.config import CompileConfig
    from trtmix.models.zoo import TEXT_MODELS
    from trtmix.search.bisection import Budget

    row: dict[str, Any] = {"seconds": {}, "peak_rss_mb": {}}
    start = time.perf_counter()
    path = folder / f"{name}.onnx"
    if name == "mlp-2.3gb":
        data, args, metric = str(folder / "mlp_recipe.py"), {}, "cosine"
    elif MODELS[name] is None:
        data, args, metric = MINILM_DATA, {}, "cosine"
    else:
        kind = "text" if MODELS[name][0] in TEXT_MODELS else "image"  # without building the model
        data, args = RECIPE, data_args(kind, "real")
        metric = "cosine" if kind == "text" else "agreement"
    if phase == "export":
        _export(name, path)
    elif phase == "calibration":
        collect_ranges(path, data, "calibration", data_args=args, cache_dir=default_cache_dir(), progress=False)
    else:
        config = CompileConfig(data=data, budget=Budget.parse(budget), metric=metric,
                               data_args=tuple(sorted(args.items())),
                               **({"parallel": parallel} if parallel is not None else {}))  # fmt: skip
        report = api.compile(str(path), folder / "job", config, fresh=True).report
        row["units"] = report["unit_count"]
        row["model_mb"] = round(sum(p.stat().st_size for p in folder.glob(f"{name}.onnx*")) / 2**20, 1)
        row["builds"], row["chosen_k"], row["stop"] = report["builds"], report["chosen_k"], report["stop_reason"]
        row["seconds"]["quantizers"] = report["quantizers"]["smoothing"].get("seconds", 0.0)
        row["seconds"]["ordering"] = sum(v or 0.0 for v in report["ordering_seconds"].values())
        row["ordering_computed"] = report["orderings_computed"]
    _phase(row, phase, start)
    return row


def _export(name: str, path: Path) -> None:
    """The model as a user would export it (or write it, for the MatMul model over 2 GiB)."""
    from trtmix.models.zoo import export_as_user, zoo_model

    if name == "mlp-2.3gb":
        _write_mlp(path)
        (path.parent / "mlp_recipe.py").write_text(MLP_RECIPE)
    elif MODELS[name] is None:
        from trtmix.export import export_onnx
        from trtmix.models.minilm import minilm

        export_onnx(*minilm(), path)
    else:
        zoo_name, size = MODELS[name]
        export_as_user(zoo_model(zoo_name, size), path, "dynamo")


def _write_mlp(path: Path) -> None:
    """The 2.3 GB MatMul model, with its weights in ``<name>.data`` as an exporter writes one over 2 GiB."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[0])),
                                       name)
               for name, shape in (("w1", (4096, MLP_WIDTH)), ("w2", (MLP_WIDTH, 4096)))]  # fmt: skip
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["output"], name="fc2")]  # fmt: skip
    tensor = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", tensor, [1, 4096])],
                              [helper.make_tensor_value_info("output", tensor, [1, 4096])], weights)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")


def _phase(row: dict[str, Any], name: str, start: float) -> None:
    row["seconds"][name] = round(time.perf_counter() - start, 1)
    row["peak_rss_mb"][name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(name: str, budget: str, timeout: float, parallel_flags: list[str]) -> dict[str, Any]:
    """Export, calibration and compile, each in a fresh process (so each peak RSS is that phase's alone), sharing a
    folder and a calibration cache; the merged JSON row, or the error a phase died of."""
    row: dict[str, Any] = {"model": name, "budget": budget, "seconds": {}, "peak_rss_mb": {}}
    with tempfile.TemporaryDirectory(prefix=f"trtmix-scaling-{name}-") as folder:
        env = {**os.environ, "TRTMIX_CACHE": str(Path(folder) / "cache")}
        for phase in PHASES:
            command = [sys.executable, __file__, "--child", name, "--budget", budget, "--folder", folder,
                       "--phase", phase, *(parallel_flags if phase == "compile" else [])]  # fmt: skip
            part = _run_phase(command, env, timeout)
            if "error" in part:
                return {"model": name, "budget": budget, "error": f"{phase}: {part['error']}"}
            for key in ("seconds", "peak_rss_mb"):
                row[key].update(part.pop(key))
            row.update(part)
    row["seconds"]["search"] = row["seconds"]["compile"] - row["seconds"]["quantizers"] - row["seconds"]["ordering"]
    return row


def _run_phase(command: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One phase's JSON, or the error it died of."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"not finished within {timeout:.0f} s (--timeout)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode < 0:
        last = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()][-1:] or ["?"]
        return {"error": f"killed by signal {-done.returncode} (SIGKILL: the kernel's out-of-memory killer, or "
                         f"--timeout); its last line: {last[0][:200]}"}  # fmt: skip
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: seconds per phase, peak RSS per phase, and the cost per unit."""
    head = ["model", "budget", "units", "ONNX MB", "export s", "calibration s", "quantizers s", "ordering s",
            "search and the rest s", "total s", "builds", "chosen k", "peak RSS MiB (export / calibration / compile)",
            "ordering s per unit", "stop"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['budget']} | failed: {row['error']} |")
            continue
        seconds, rss = row["seconds"], row["peak_rss_mb"]
        total = seconds["export"] + seconds["calibration"] + seconds["compile"]
        per_unit = seconds["ordering"] / row["units"] if seconds["ordering"] else 0.0
        lines.append(
            f"| {row['model']} | {row['budget']} | {row['units']} | {row['model_mb']} | {seconds['export']:.0f} | "
            f"{seconds['calibration']:.0f} | {seconds['quantizers']:.0f} | {seconds['ordering']:.0f} | "
            f"{seconds['search']:.0f} | {total:.0f} | {row['builds']} | {row['chosen_k']} | "
            f"{rss['export']:.0f} / {rss['calibration']:.0f} / {rss['compile']:.0f} | {per_unit:.2f} | {row['stop']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budgets", nargs="+", default=["1%", "0.1%"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds one run may take (default 1200)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--budget", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    add_parallel_flags(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.budget, args.folder, args.phase, parallel_settings(args))), flush=True)
        return
    parallel_flags = ["--workers", str(args.workers)] if args.workers else []
    parallel_flags += ["--ray-address", args.ray_address] if args.ray_address else []
    from trtmix.runtime.cpu import cpu_features

    print(cpu_features().describe(), flush=True)
    rows = []
    for name in args.models:
        for budget in args.budgets:
            print(f"{name} at {budget}...", file=sys.stderr, flush=True)
            rows.append(run(name, budget, args.timeout, parallel_flags))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(markdown(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
