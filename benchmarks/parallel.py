"""Ray workers against the serial path, in one run: the kl ordering, and frontier probes.

    python benchmarks/parallel.py [--units N] [--frontier 6] [--skip-frontier] [--skip-exact]

1. The MiniLM-L6 ``kl`` ordering (every unit scored alone on the job's 2 calibration batches, one switched graph per
   scorer): serial at the default threads (all cores), then on a local Ray instance with 1 and with 2 one-core
   workers (one engine thread each).  Ray's start-up is reported apart; the scoring wall time includes shipping the
   job to the workers and each worker compiling its switched graph.  The scores must agree with the serial ones.
   Then the same with ``--kl-exact``'s scorer (a compile and a session per unit), whose work is mostly one-threaded.
2. A ``compile`` of MiniLM with ``--frontier N`` and a budget all-INT8 meets, so the search is the all-INT8 probe plus
   N frontier probes: serial, then with 2 workers (probes built and scored on the workers, each timed alone holding
   the node's cores).  The ordering is computed before the clock starts, in each job.
CPU flags printed; the ratios are serial / parallel.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kl_one_graph import prepare  # noqa: E402

from trtmix.calibration.calibrate import CalibrationConfig  # noqa: E402
from trtmix.calibration.collect import collect_ranges  # noqa: E402
from trtmix.data.recipes import checked_batches, load_batches  # noqa: E402
from trtmix.ir.graph import load_onnx  # noqa: E402
from trtmix.ir.units import find_units  # noqa: E402
from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.parallel.cluster import Cluster, ParallelSettings  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import Budget  # noqa: E402
from trtmix.sensitivity.measured import ScoringJob, score_plans  # noqa: E402


def scoring_job(path: Path, data: str, units_limit: int | None) -> ScoringJob:
    """The kl ordering's job: the model, its first ``units_limit`` units, ranges and 2 calibration batches."""
    model = load_onnx(path)
    ranges = collect_ranges(path, data, "calibration", CalibrationConfig())
    feeds = list(checked_batches(load_batches(data, "calibration"), model, limit=2))
    return ScoringJob(model, find_units(model)[:units_limit], ranges, "tensorrt", "cosine", feeds)


def ordering_rows(job: ScoringJob) -> list[str]:
    """Seconds of ``job``'s kl ordering serially and with 1 and 2 workers, and the largest score difference."""
    plans = [[unit.name] for unit in job.units]
    start = time.perf_counter()
    serial = score_plans(job, plans, "kl serial")
    serial_s = time.perf_counter() - start
    rows = [f"| serial, default threads | – | {serial_s:.1f} | 1.00 | – |"]
    for workers in (1, 2):
        start = time.perf_counter()
        cluster = Cluster(ParallelSettings(workers=workers))
        startup = time.perf_counter() - start
        start = time.perf_counter()
        scores = score_plans(job, plans, f"kl {workers} workers", cluster)
        seconds = time.perf_counter() - start
        cluster.close()
        gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(serial, scores, strict=True))
        rows.append(f"| {workers} worker(s), 1 thread each | {startup:.1f} | {seconds:.1f} | "
                    f"{serial_s / seconds:.2f} | {gap:.1e} |")  # fmt: skip
    scorer = "--kl-exact: a compile and a session per unit" if job.exact else "one switched graph per scorer"
    return [f"kl ordering of {len(job.units)} units (MiniLM-L6, 2 calibration batches; {scorer})",
            "| run | Ray start (s) | scoring (s) | serial / this | max relative score difference |",
            "|---|---|---|---|---|", *rows]  # fmt: skip


def frontier_rows(folder: Path, frontier: int) -> list[str]:
    """Seconds of the all-INT8 probe plus ``frontier`` frontier probes, serial and with 2 workers."""
    rows, serial_s = [], None
    for label, parallel in (("serial", ParallelSettings()), ("2 workers", ParallelSettings(workers=2))):
        config = CompileConfig(data="trtmix.models.minilm:load_data", budget=Budget.parse("50%"), metric="cosine",
                               frontier=frontier, input_names=("input_ids", "attention_mask"),
                               parallel=parallel)  # fmt: skip
        pipeline = Pipeline("trtmix.models.minilm:minilm", folder / label.replace(" ", "-"), config)
        try:
            baseline = pipeline.baseline()["accuracy"]
            pipeline.order("kl")
            start = time.perf_counter()
            search = pipeline.search("kl", baseline)
            seconds = time.perf_counter() - start
        finally:
            pipeline.close()
        serial_s = serial_s or seconds
        rows.append(f"| {label} | {len(search.probes)} | {seconds:.1f} | {serial_s / seconds:.2f} |")
    return [f"search with --frontier {frontier} (MiniLM-L6, all-INT8 meets the budget)",
            "| run | probes | search (s) | serial / this |", "|---|---|---|---|", *rows]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, help="order only the first N units (default: all)")
    parser.add_argument("--frontier", type=int, default=6, help="frontier probes of part 2 (default: 6)")
    parser.add_argument("--skip-frontier", action="store_true", help="run part 1 only")
    parser.add_argument("--skip-exact", action="store_true", help="skip part 1's --kl-exact ordering")
    args = parser.parse_args()
    print(cpu_features().describe())
    with tempfile.TemporaryDirectory(prefix="trtmix-parallel-") as folder:
        path, data, _ = prepare("minilm", Path(folder))
        job = scoring_job(path, data, args.units)
        print("\n".join(ordering_rows(job)), flush=True)
        if not args.skip_exact:
            print("\n".join(ordering_rows(replace(job, exact=True))), flush=True)
        if not args.skip_frontier:
            print("\n".join(frontier_rows(Path(folder), args.frontier)), flush=True)


if __name__ == "__main__":
    main()
