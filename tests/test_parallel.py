"""Ray (``--workers``, ``--ray-address``): the same orderings and choices as the serial path, and lost workers.

A local Ray instance is started by the tests (``ray.init(num_cpus=2, resources=...)``), and a two-node cluster on
the loopback with ``ray start``.  Latency is scripted (``tests/parallel_backend.py``) where choices are compared,
since two runs never time alike.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtmix.cli import main
from trtmix.errors import TrtmixError
from trtmix.ir.units import find_units
from trtmix.job import pipeline as pipeline_module
from trtmix.job import probes as probes_module
from trtmix.job.config import CompileConfig
from trtmix.job.final import ORIGINAL
from trtmix.job.run import run_compile
from trtmix.parallel.cluster import BUILD_GPUS, TIMING, Cluster, ParallelSettings
from trtmix.search.bisection import Budget
from trtmix.sensitivity.measured import ScoringJob, score_plans

ray = pytest.importorskip("ray", reason="the trtmix[ray] extra is not installed")

from tests.conftest import TINY_RECIPE as RECIPE  # noqa: E402
from tests.conftest import batches_for  # noqa: E402
from tests.parallel_backend import DyingScoringJob, OnDeclaredGpus, ScriptedLatency, stamped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def recipe(tmp_path: Path) -> str:
    path = tmp_path / "recipe.py"
    path.write_text(RECIPE)
    return str(path)


@pytest.fixture()
def local_ray():
    """A local Ray instance of two one-core workers and one timing token; workers can import ``tests``."""
    ray.init(num_cpus=2, resources={TIMING: 1}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture()
def declared_gpus():
    """A local Ray instance with four one-core workers, two GPUs declared to Ray (none is real) and a token each."""
    ray.init(num_cpus=4, num_gpus=2, resources={TIMING: 2}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


def _job(recipe: str, output: Path, backend: ScriptedLatency, monkeypatch: pytest.MonkeyPatch,
         parallel: ParallelSettings | None = None, compare: tuple[str, ...] = (),
         budget: str = "0.002%") -> dict:  # fmt: skip
    """A compile of the tiny conv net with ``backend``; --frontier 3 and the final choice by the search's medians."""
    monkeypatch.setattr(pipeline_module, "get_backend", lambda *args, **kwargs: backend)
    config = CompileConfig(data=recipe, budget=Budget.parse(budget), metric="cosine", frontier=3, final_rounds=0,
                           runs=3, parallel=parallel or ParallelSettings(), compare=compare)  # fmt: skip
    return run_compile("trtmix.models.tiny:convnet", output, config)


def _chosen_ms(report: dict) -> float:
    """The chosen plan's probe median, or the FP32 graph's when the user's own graph won (a scripted tie at 1 ms)."""
    if report["chosen"] == ORIGINAL:
        return report["baseline"]["fp32"]["latency"]["median_ms"]
    return {p["plan_hash"]: p for p in report["probes"]}[report["chosen"]]["latency"]["median_ms"]


def test_a_local_cluster_orders_and_chooses_as_the_serial_path(recipe, tmp_path, monkeypatch, local_ray) -> None:
    serial = _job(recipe, tmp_path / "serial", ScriptedLatency(), monkeypatch, budget="0%")
    parallel = _job(recipe, tmp_path / "parallel", ScriptedLatency(), monkeypatch, ParallelSettings(workers=2),
                    budget="0%")  # no drop at all: all-INT8 misses, so the search bisects (k-section on workers)
    ranks = [{unit["name"]: unit["ranks"]["kl"] for unit in report["units"]} for report in (serial, parallel)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 5
    assert serial["stop_reason"].startswith("interval closed") and serial["orderings_computed"] == {"kl": True}
    probes = {p["k"]: p for p in parallel["probes"]}
    assert len(serial["probes"]) >= 5, "bisection plus frontier probes"
    for probe in serial["probes"]:  # k-section measures a superset of the serial probes, with the same results
        assert probes[probe["k"]]["status"] == "ok"
        assert probes[probe["k"]]["accuracy"] == pytest.approx(probe["accuracy"], abs=1e-6)
        assert probes[probe["k"]]["latency"]["median_ms"] == probe["latency"]["median_ms"]
    chosen = [_chosen_ms(report) for report in (serial, parallel)]
    assert chosen[1] <= chosen[0]


def test_compared_orderings_are_searched_together_each_as_alone(recipe, tmp_path, monkeypatch, local_ray) -> None:
    """--compare-orderings on workers: one batch of probes holds both searches' points; each search measures what
    it measures alone, with the same results, and a plan both ask for is measured once."""
    batches: list[set[str]] = []
    measure = probes_module.measure_on_cluster

    def spied(driver, cluster, plans):  # noqa: ANN001, ANN202 - records what each batch held, then measures it
        batches.append({plan.stable_hash() for plan in plans})
        return measure(driver, cluster, plans)

    serial = _job(recipe, tmp_path / "serial", ScriptedLatency(), monkeypatch, compare=("random",), budget="0%")
    monkeypatch.setattr(pipeline_module, "measure_on_cluster", spied)  # what the wiring hands the driver
    parallel = _job(recipe, tmp_path / "parallel", ScriptedLatency(), monkeypatch, ParallelSettings(workers=2),
                    compare=("random",), budget="0%")  # no drop at all: each search bisects  # fmt: skip
    hashes = {}
    for name in ("kl", "random"):
        measured = {p["k"]: p for p in parallel["orderings"][name]}
        assert serial["stop_reason"].startswith("interval closed"), "the budget makes each search bisect"
        assert len(serial["orderings"][name]) >= 4
        for probe in serial["orderings"][name]:
            assert measured[probe["k"]]["plan_hash"] == probe["plan_hash"], f"{name}: the same plan at k={probe['k']}"
            assert measured[probe["k"]]["accuracy"] == pytest.approx(probe["accuracy"], abs=1e-6)
            assert measured[probe["k"]]["latency"]["median_ms"] == probe["latency"]["median_ms"]
        hashes[name] = {p["plan_hash"] for p in parallel["orderings"][name]}
    only = [hashes["kl"] - hashes["random"], hashes["random"] - hashes["kl"]]
    assert any(batch & only[0] and batch & only[1] for batch in batches), "the searches ran in the same batches"
    assert len(hashes["kl"] & hashes["random"]) >= 2, "all-INT8 and all-high are the same plans in both"
    assert parallel["builds"] == len({p["plan_hash"] for p in parallel["probes"]}), "each plan measured once"


def test_a_lost_worker_is_retried_once_then_its_probe_fails_and_the_job_goes_on(
    recipe, tmp_path, monkeypatch, local_ray
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    retried = _job(recipe, tmp_path / "retried", ScriptedLatency(die_in=markers), monkeypatch,
                   ParallelSettings(workers=2))  # fmt: skip
    died = {marker.name for marker in markers.iterdir()}
    assert len(died) >= 2, "a worker died on each frontier probe's first build"
    assert all(p["status"] == "ok" for p in retried["probes"]), "each died once and its retry succeeded"
    assert died <= {p["plan_hash"] for p in retried["probes"]}

    lost = _job(recipe, tmp_path / "lost", ScriptedLatency(die_in=markers, always_die=True), monkeypatch,
                ParallelSettings(workers=2))  # fmt: skip
    failed = [p for p in lost["probes"] if p["status"] == "failed"]
    assert failed and all("lost twice" in p["error"] for p in failed)
    assert len(failed) == len(died) and lost["chosen"] is not None, "the bisection's own probes still count"


def test_without_the_flags_ray_is_never_imported(recipe, tmp_path) -> None:
    code = ("import sys; from trtmix.cli import main; "
            f"code = main(['-q', 'compile', 'trtmix.models.tiny:convnet', '--data', {recipe!r}, '--metric', 'cosine', "
            f"'-o', {str(tmp_path / 'out')!r}, '--runs', '3', '--frontier', '2', '--max-drop', '0.002%']); "
            "assert code == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_ray_the_flags_name_the_extra(recipe, tmp_path) -> None:
    code = ("import sys; sys.modules['ray'] = None; from trtmix.cli import main; "
            f"sys.exit(main(['compile', 'trtmix.models.tiny:convnet', '--data', {recipe!r}, '--metric', 'cosine', "
            f"'-o', {str(tmp_path / 'out')!r}, '--runs', '3', '--frontier', '2', '--workers', '2']))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "pip install 'trtmix[ray]'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_parallel_flags_are_refused_before_any_work(tmp_path, capsys) -> None:
    args = ["compile", "trtmix.models.tiny:convnet", "--data", "x.py", "-o", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main([*args, "--workers", "2", "--ray-address", "auto"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--workers", "-1"])
    assert "--workers: must be 0 or more (got -1)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def two_nodes(tmp_path: Path):
    """A head node and a second node on the loopback, each with one core and one timing token."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # fmt: skip
    port = 6391
    resources = json.dumps({TIMING: 1})
    subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
    try:
        node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--resources={resources}"]
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", *node, "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)  # fmt: skip
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", *node], env=env, check=True,
                       capture_output=True, timeout=180)  # fmt: skip
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_compile_runs_end_to_end_on_a_two_node_cluster(recipe, tmp_path, two_nodes) -> None:
    address, env = two_nodes
    status = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}, "
                             "log_to_driver=False); print(len([n for n in ray.nodes() if n['Alive']]))"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.stdout.strip().splitlines()[-1] == "2", status.stderr[-2000:]
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "trtmix.cli", "compile", "trtmix.models.tiny:convnet", "--data",
                             recipe, "--metric", "cosine", "-o", str(output), "--runs", "3", "--frontier", "3",
                             "--max-drop", "0.002%", "--ray-address", address], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["chosen"] is not None and len(report["probes"]) >= 5
    assert all(p["status"] == "ok" and p["latency"]["median_ms"] > 0 for p in report["probes"])
    jobs = subprocess.run([sys.executable, "-c", "from trtmix.parallel.cluster import Cluster, ParallelSettings; "
                           "from tests.parallel_backend import stamped; "
                           f"stamps = Cluster(ParallelSettings(address={address!r})).jobs(stamped, [(8.0,), (8.0,)], "
                           "'jobs'); print(len({s[0] for s in stamps}), max(s[1] for s in stamps) < min(s[2] for s in "
                           "stamps))"], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert jobs.stdout.strip().splitlines()[-1:] == ["2 True"], "benchmark jobs ran side by side, one per host"


def test_benchmark_jobs_hold_the_host_one_at_a_time(local_ray) -> None:
    """A job times its own probes: on one CPU host (one token), the second starts after the first ends."""
    cluster = Cluster(ParallelSettings(workers=2))
    first, second = sorted(cluster.jobs(stamped, [(1.0,), (1.0,)], "jobs"), key=lambda stamp: stamp[1])
    assert first[2] <= second[1]


def test_a_cluster_without_timing_tokens_is_refused() -> None:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(TrtmixError, match="offers the 'trtmix_timing' resource") as caught:
            Cluster(ParallelSettings(address="auto"))
        assert "--resources" in str(caught.value)
    finally:
        ray.shutdown()


def test_sensitivity_on_workers_gives_the_serial_scores(recipe, tmp_path) -> None:
    results = []
    for label, flags in (("serial", []), ("workers", ["--workers", "2"])):
        output = tmp_path / f"{label}.json"
        args = ["-q", "sensitivity", "trtmix.models.tiny:convnet", "--data", recipe, "--method", "kl", "augmented-b",
                "--max-probes", "4", "--no-cache", "-o", str(output), *flags]  # fmt: skip
        assert main(args) == 0
        results.append(json.loads(output.read_text()))
    assert not ray.is_initialized(), "the command stops the Ray instance it started"
    for unit, scores in results[0]["units"].items():
        for method in ("kl", "b"):
            assert results[1]["units"][unit]["scores"][method] == pytest.approx(scores["scores"][method], rel=1e-4,
                                                                                 abs=1e-9)  # fmt: skip


@pytest.mark.parametrize("always_die", [False, True])
def test_kl_scores_survive_lost_workers(calibrated, tmp_path, local_ray, always_die) -> None:
    """A share whose worker died is retried once; lost twice, the driver scores it: the scores are the serial ones."""
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    feeds = batches_for("convnet", 2, seed=4)
    plans = [[unit.name] for unit in units]
    serial = score_plans(ScoringJob(model, units, ranges, "tensorrt", "cosine", feeds), plans, "serial")
    markers = tmp_path / "markers"
    markers.mkdir()
    dying = DyingScoringJob(model, units, ranges, "tensorrt", "cosine", feeds, die_in=markers, always_die=always_die)
    cluster = Cluster(ParallelSettings(workers=2))
    scores = score_plans(dying, plans, "on workers", cluster)
    assert len(list(markers.iterdir())) == (4 if always_die else 1), "two shares, each tried twice; or one death"
    assert scores == pytest.approx(serial, rel=1e-4, abs=1e-9)


def test_joining_no_cluster_is_one_clear_error(recipe, tmp_path, capsys) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, timeout=120)
    args = ["compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(tmp_path / "o"),
            "--runs", "3", "--frontier", "2", "--max-drop", "50%", "--ray-address", "auto"]  # fmt: skip
    assert main(args) == 2
    printed = capsys.readouterr()
    assert "Cannot join the Ray cluster at 'auto'" in printed.err and "ray start --head" in printed.err
    assert "Traceback" not in printed.err + printed.out


def _overlap(first: dict, second: dict) -> bool:
    return first["start"] < second["end"] and second["start"] < first["end"]


def test_a_gpu_backend_builds_and_times_on_a_whole_gpu(recipe, tmp_path, monkeypatch, declared_gpus) -> None:
    """Ray's placement of a TensorRT job, on declared GPUs (this machine has none): every build and timing sees one
    GPU, nothing else runs on a GPU while it is built on or timed (a TensorRT build times its tactics), and the
    driver works only while no task runs."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    report = _job(recipe, tmp_path / "out", OnDeclaredGpus(stamps), monkeypatch, ParallelSettings(workers=4),
                  budget="0%")  # fmt: skip
    assert report["stop_reason"].startswith("interval closed") and report["chosen"] is not None
    assert all(p["status"] == "ok" for p in report["probes"])
    events = [json.loads(path.read_text()) for path in stamps.iterdir()]
    tasks = [event for event in events if event["pid"] != os.getpid()]
    assert {event["kind"] for event in tasks} == {"build", "time"}
    assert all(len(event["gpus"]) == 1 for event in tasks), "Ray gave each build and timing one GPU"
    for held in tasks:
        beside = [other for other in tasks if other is not held and other["gpus"] == held["gpus"]]
        assert not any(_overlap(held, other) for other in beside), f"a GPU running a {held['kind']} runs nothing else"
    builds = [event for event in tasks if event["kind"] == "build"]
    assert any(_overlap(first, second) for first in builds for second in builds if first is not second), \
        "builds on the two GPUs ran side by side"
    on_driver = [event for event in events if event["pid"] == os.getpid()]
    assert on_driver and not any(_overlap(mine, task) for mine in on_driver for task in tasks)


def test_benchmark_jobs_on_gpus_run_side_by_side_one_gpu_each(declared_gpus) -> None:
    """A job holds one GPU (and its token): two GPUs run two jobs at once, each seeing only its own."""
    cluster = Cluster(ParallelSettings(workers=4))
    stamps = cluster.jobs(stamped, [(2.0,), (2.0,)], "jobs", gpu=True)
    assert sorted(stamp[3] for stamp in stamps) == ["0", "1"]
    assert max(stamp[1] for stamp in stamps) < min(stamp[2] for stamp in stamps)


def test_a_build_waits_while_its_gpu_is_timed(declared_gpus) -> None:
    """Builds and timings exclude each other: with both GPUs held by timings, a build starts only once a timing has
    ended (and so never beside one)."""
    cluster = Cluster(ParallelSettings(workers=4))
    timings = [cluster.submit(stamped, (4.0,), options) for options in cluster.timing_options([None, None], gpu=True)]
    time.sleep(2.0)  # both timings hold their GPUs by now
    builds = cluster.map(stamped, [(0.1,), (0.1,)], "builds", BUILD_GPUS)
    timed = cluster.gather(timings, "timings")
    assert sorted(stamp[3] for stamp in timed) == ["0", "1"]
    assert min(build[1] for build in builds) >= min(stamp[2] for stamp in timed)
    assert all(build[3] in ("0", "1") for build in builds), "a build sees its one GPU"
