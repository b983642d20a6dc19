"""The same `trtmix compile`, rerun: how often the choice and its latency ratio agree, old protocol against new.

    python benchmarks/noise.py [--models efficientnet-lite0 minilm] [--repeats 5]

Each repeat is a fresh job in its own folder (export, kl ordering, search, choice); the calibration cache is shared.
Protocols:

* ``single``: each probe timed exactly ``--runs`` 20 times, the fastest single median wins (before the noise issue);
* ``interleaved``: each probe timed until its median is known to ±3% (cap 200 runs / 10 s), then the contenders
  re-timed in 12 interleaved rounds; the high-precision plan is kept unless beaten with confidence (the default).

The table gives, per model and protocol: the chosen k of every repeat, how many repeats agree with the most common
choice, the spread of the chosen plan's latency ratio to the all-high plan, and the timing seconds spent per job
(all probe timings plus the final rounds), so the cost of the new protocol is visible.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensorrt_flavour import MODELS  # noqa: E402

from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.run import run_compile  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import Budget  # noqa: E402

PROTOCOLS = {"single": {"timing_target": None, "final_rounds": 0}, "interleaved": {}}
BUDGET = "1%"


def _timing_seconds(report: dict) -> float:
    """Seconds spent timing: every probe's runs (median × runs as a floor) and the final interleaved rounds."""
    probes = sum(p["latency"]["mean_ms"] * (p["latency"]["runs"] + p["latency"]["warmup"]) / 1e3
                 for p in report["probes"] if p.get("latency"))  # fmt: skip
    final = report.get("final_timing") or {}
    rounds = final.get("rounds", 0) * final.get("round_runs", 0)
    finals = sum(ms * (rounds + final.get("rounds", 0)) / 1e3 for ms in final.get("medians_ms", {}).values())
    return probes + finals


def run(model: str, protocol: str, repeats: int, folder: Path) -> list[dict]:
    spec = MODELS[model]
    rows = []
    for repeat in range(repeats):
        config = CompileConfig(data=spec.data, budget=Budget.parse(BUDGET), metric=spec.metric,
                               input_names=spec.inputs, eval_batches=spec.eval_batches,
                               **PROTOCOLS[protocol])  # type: ignore[arg-type]  # fmt: skip
        started = time.perf_counter()
        report = run_compile(spec.source, folder / f"{model}-{protocol}-{repeat}", config)
        chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
        high = report["baseline"]["all_high"]["latency"]["median_ms"]
        final = report.get("final_timing")
        if final and report["chosen"] in final["medians_ms"]:
            ratio = final["medians_ms"][report["chosen"]] / final["medians_ms"][final["baseline"]]
        else:
            ratio = chosen["latency"]["median_ms"] / high if chosen else None
        rows.append({"k": report["chosen_k"], "ratio": ratio, "timing_s": _timing_seconds(report),
                     "wall_s": time.perf_counter() - started, "units": report["unit_count"]})  # fmt: skip
        print(f"{model} {protocol} #{repeat}: k={report['chosen_k']} ratio={ratio}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="rerun agreement of trtmix compile, single vs interleaved timing")
    parser.add_argument("--models", nargs="+", choices=("efficientnet-lite0", "minilm"),
                        default=["efficientnet-lite0", "minilm"])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    results = {}
    with tempfile.TemporaryDirectory(prefix="trtmix-noise-bench-") as folder:
        for model in args.models:
            for protocol in PROTOCOLS:
                results[(model, protocol)] = run(model, protocol, args.repeats, Path(folder))
    print(f"\n{cpu_features().describe()}; tensorrt flavour on OpenVINO, budget {BUDGET} of the all-high plan\n")
    print(
        "| model | protocol | chosen k per repeat | agree | latency / all-high (min–max) | timing s per job | "
        "wall s per job |"
    )
    print("|---|---|---|---|---|---|---|")
    for (model, protocol), rows in results.items():
        ks = [row["k"] for row in rows]
        agree = collections.Counter(ks).most_common(1)[0][1]
        ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
        spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "–"
        timing = sum(row["timing_s"] for row in rows) / len(rows)
        wall = sum(row["wall_s"] for row in rows) / len(rows)
        print(
            f"| {model} | {protocol} | {', '.join(map(str, ks))} | {agree}/{len(rows)} | {spread} | {timing:.1f} | "
            f"{wall:.0f} |"
        )


if __name__ == "__main__":
    main()
