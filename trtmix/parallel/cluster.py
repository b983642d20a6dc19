"""Ray, when a job asks for it: the only module of trtmix that imports ``ray``.

``--workers N`` starts a local Ray instance with N one-core workers; ``--ray-address`` joins a running cluster.
Without either nothing here is imported and every job runs serially, as before.

* Work that does not time anything (scoring plans for an ordering, building and scoring probes) runs anywhere, one
  core per task and one engine thread per task (``TASK_THREADS``), so the workers together use the cores and no more.
  With a GPU backend (TensorRT), a probe's build and scoring also hold one whole GPU (``BUILD_GPUS``): Ray makes
  that GPU the task's only visible one, so a build never lands on a GPU that is being timed, and never beside
  another build (TensorRT times its kernel tactics while it builds: two builds on one GPU would time them against
  each other, and the noisy picks would persist in the shared timing cache).
* Latency is never measured beside other work on the same device.  Every node offers ``trtmix_timing`` tokens, one
  per device (one per CPU host; one per GPU on a TensorRT host).  A timing task holds a token of the node that built
  the probe and its device: every core of a CPU host, or one whole GPU.
* Ray retries a task whose worker died once (``max_retries=1``); after that the caller gets a ``Failure`` and
  decides (the driver journals the probe as failed; an ordering rescores the lost part itself).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trtmix.errors import TrtmixError
from trtmix.progress import bar as progress_bar

LOG = logging.getLogger(__name__)
TIMING = "trtmix_timing"  # the custom resource: one token per timing device on each node
RETRIES = 1
TASK_THREADS = 1  # engine threads of a one-core task
BUILD_GPUS = 1.0  # a build-and-score task of a GPU backend holds a whole GPU: its tactic timing runs alone


@dataclass(frozen=True)
class ParallelSettings:
    """``--workers`` and ``--ray-address``; neither set means the serial path."""

    workers: int = 0
    address: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the job runs on Ray."""
        return bool(self.workers or self.address)

    def validate(self) -> None:
        """Refuse a negative worker count, and both flags at once (a cluster brings its own workers)."""
        if self.workers < 0:
            raise TrtmixError(f"--workers must be 0 or more (got {self.workers}).", fix="use --workers 2, or omit it")
        if self.workers and self.address:
            raise TrtmixError(
                "--workers starts a local Ray instance and --ray-address joins a running one: pass one of them.",
                fix="use --workers N on one machine, or --ray-address auto|HOST:PORT for a cluster",
            )


@dataclass(frozen=True)
class Failure:
    """A task that failed after its retry: what it was and why."""

    label: str
    error: str


def import_ray() -> Any:
    """``ray``, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise TrtmixError(
            "--workers and --ray-address need Ray, which is not installed.",
            fix="pip install 'trtmix[ray]'",
        ) from err
    return ray


class Cluster:
    """A connected Ray: tasks on one-core workers, and exclusive timing; see the module docstring."""

    def __init__(self, settings: ParallelSettings) -> None:
        settings.validate()
        self.ray = ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            try:
                if settings.address:
                    ray.init(address=settings.address, **options)
                else:
                    gpus = local_gpus()
                    tokens = {TIMING: max(1, gpus)}
                    ray.init(num_cpus=settings.workers, num_gpus=gpus or None, resources=tokens, **options)
            except (ConnectionError, ValueError, RuntimeError) as err:
                where = f"join the Ray cluster at {settings.address!r}" if settings.address else "start Ray"
                raise TrtmixError(
                    f"Cannot {where}: {str(err).splitlines()[0]}",
                    fix="start the cluster first (`ray start --head` on its head host; README: 'Running on several "
                    "workers or a cluster'), or use --workers N on this machine",
                ) from err
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        if not ray.cluster_resources().get(TIMING):
            self.close()
            raise TrtmixError(
                f"No node of the Ray cluster at {settings.address} offers the {TIMING!r} resource, so trtmix cannot "
                "keep latency measurements apart from other work.",
                expected=f"every node started with --resources='{{\"{TIMING}\": N}}' (N: its GPUs; 1 on a CPU host)",
                fix="restart the nodes with that flag (README: 'Running on several workers or a cluster')",
            )

    def map(self, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]], label: str,
            gpus: float = 0.0) -> list[Any]:  # fmt: skip
        """``function(*call)`` for every call on the workers, in order; a call that failed twice is a ``Failure``.

        Each call holds one core, and ``gpus`` GPUs when it builds or runs on a GPU (``BUILD_GPUS``).
        """
        remote = self.ray.remote(num_cpus=1, num_gpus=gpus, max_retries=RETRIES)(function)
        return self._gather([remote.remote(*call) for call in calls], label)

    def put(self, value: Any) -> Any:
        """``value`` in the object store once, for many tasks to read."""
        return self.ray.put(value)

    def timing_options(self, node_ids: Sequence[str | None], gpu: bool = False) -> list[dict[str, Any]]:
        """Where each timing task may run: on its node (the probe's builder), holding one of the node's tokens.

        On a CPU host the device is the CPU, so the task also holds every core of the node; on a GPU host
        (``gpu``) it holds one GPU, which Ray makes the task's only visible one.  The cluster's nodes are listed once.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cores = {node["NodeID"]: node["Resources"].get("CPU", 1) for node in self.ray.nodes() if node["Alive"]}
        placed = []
        for node_id in node_ids:
            device: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": cores.get(node_id, 1)}
            options: dict[str, Any] = {**device, "resources": {TIMING: 1}}
            if node_id is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
            placed.append(options)
        return placed

    def jobs(self, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]], label: str,
             gpu: bool = False) -> list[Any]:  # fmt: skip
        """Whole jobs (a benchmark's runs), ``function(*call)`` each, spread over the nodes in turn.

        A job times its own probes, so it holds a timing token and its device for its whole run: every core of a
        CPU host, or one GPU.  Jobs then run side by side on different hosts (or GPUs), never beside each other's
        timing on one CPU host.  A job that failed twice is a ``Failure``.
        """
        nodes = [node["NodeID"] for node in self.ray.nodes() if node["Alive"] and node["Resources"].get(TIMING)]
        places = self.timing_options([nodes[index % len(nodes)] for index in range(len(calls))], gpu)
        refs = [self.submit(function, call, options) for call, options in zip(calls, places, strict=True)]
        return self._gather(refs, label)

    def submit(self, function: Callable[..., Any], call: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """One task with ``options`` (resources, placement); ``gather`` collects it."""
        return self.ray.remote(max_retries=RETRIES, **options)(function).remote(*call)

    def gather(self, refs: Sequence[Any], label: str) -> list[Any]:
        """The results of ``refs`` in order (``Failure`` for a task that failed after its retry)."""
        return self._gather(list(refs), label)

    def _gather(self, refs: list[Any], label: str) -> list[Any]:
        results: dict[int, Any] = {}
        index = {ref: position for position, ref in enumerate(refs)}
        pending = list(refs)
        with progress_bar(total=len(refs), desc=f"{label} ({self.workers} workers)", unit="task") as progress:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                for ref in done:
                    results[index[ref]] = self._result(ref, f"{label} #{index[ref]}")
                    progress.update()
        return [results[position] for position in range(len(refs))]

    def _result(self, ref: Any, label: str) -> Any:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, TrtmixError):
                raise cause from None  # the task's own clear error, as the serial path would raise it
            LOG.warning("%s failed after %d retry: %s", label, RETRIES, str(err).splitlines()[0])
            return Failure(label, str(err).splitlines()[0])

    def close(self) -> None:
        """Shut Ray down if this process started it."""
        if self.started:
            self.ray.shutdown()


def local_gpus() -> int:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected), one timing token each.

    0 without a CUDA torch (its CPU build): Ray then finds the GPUs itself, and the host offers one token.
    """
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def current_node() -> str | None:
    """Inside a Ray task, the node it runs on (where its files are); elsewhere None, importing nothing."""
    if "ray" not in sys.modules:
        return None
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None

