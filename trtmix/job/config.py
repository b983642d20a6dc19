"""What one ``trtmix compile`` job is asked to do, and the identity its journal is kept under."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from trtmix import registry
from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.data.user_code import source_identity
from trtmix.data.user_metric import is_user_metric, metric_identity
from trtmix.errors import TrtmixError
from trtmix.parallel.cluster import ParallelSettings
from trtmix.quant.flavours import get_flavour
from trtmix.quant.plan import Precision
from trtmix.quant.smooth import SmoothSettings
from trtmix.runtime.timing import TimingPolicy
from trtmix.search.bisection import Budget

MIN_FLOAT_DROP = 1e-4  # a 0% budget still lets float16 round: 0.01% of the FP32 metric
# The settings that change what a probe measures; the journal refuses to mix runs that differ in any of them.
MEASURED_SETTINGS = ("data", "data_args", "metric", "flavour", "backend", "calibration", "eval_batches", "runs",
                     "warmup", "threads", "default", "tensorrt", "timing_target", "max_runs",
                     "max_timing_seconds", "score_output", "weight_bits", "kl_exact", "smooth",
                     "bias_correction", "weight_rounding", "range_choice")  # fmt: skip


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``trtmix compile`` needs besides the model and the output folder."""

    data: str
    budget: Budget
    metric: str = "auto"  # resolved from the scored output by ``load_evaluation`` (the summary says what and why)
    flavour: str = "tensorrt"
    backend: str = "auto"
    ordering: str = "kl"
    compare: tuple[str, ...] = ()
    frontier: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data_args: tuple[tuple[str, str], ...] = ()
    eval_batches: int = 8
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    default: Precision = Precision.FP16
    exporter: str = "auto"
    input_names: tuple[str, ...] = ()
    strict_precision: bool = False
    tensorrt: tuple[tuple[str, str], ...] = ()
    relative_to: str = "high"  # budgets relative to the all-high plan (the paper's 16-bit baseline) or "fp32"
    timing_target: float | None = 0.03  # time each artifact until its median is known to ±3% (None: exactly runs)
    max_runs: int = 200
    max_timing_seconds: float = 10.0
    final_rounds: int = 12  # interleaved rounds re-timing the contenders at the end (0: choose by single medians)
    score_output: str | None = None  # the graph output the metric scores (None: the first)
    weight_bits: int | None = None  # ort-cpu weight width (None: 8 with VNNI/AMX, else 7)
    kl_exact: bool = False  # score each unit for kl on its own compiled graph (else one switched graph for all)
    groups: bool = False  # decide units in groups (shared input, chains) as single bisection steps
    smooth: SmoothSettings = field(default_factory=SmoothSettings)  # outlier-aware scaling of MatMul/Gemm inputs
    bias_correction: bool = True  # subtract int8 weight rounding's mean output shift from unit biases
    weight_rounding: bool = True  # learn INT8 weights' rounding on calibration data, kept where the metric gains
    range_choice: bool = True  # measure each tensor's range method chosen by its readers' error against one method
    parallel: ParallelSettings = field(default_factory=ParallelSettings)  # Ray workers; changes no measurement
    float_drop: float | None = None  # what the all-high plan may lose to FP32 (None: a tenth of the budget's drop)

    def float_tolerance(self) -> float:
        """The all-high plan's allowed loss against FP32: ``float_drop``, else a tenth of the budget's, ≥ 0.01%."""
        if self.float_drop is not None:
            return self.float_drop
        return max((1.0 - self.budget.lower) / 10, MIN_FLOAT_DROP)

    def timing_policy(self) -> TimingPolicy:
        """How each probe is timed."""
        return TimingPolicy(self.runs, self.warmup, self.timing_target, self.max_runs, self.max_timing_seconds)

    def validate(self) -> None:
        """Refuse unknown names and a backend that cannot run the flavour, before any work is done."""
        if self.metric not in registry.METRICS and not is_user_metric(self.metric):
            raise TrtmixError(f"Unknown metric {self.metric!r}.",
                              expected=f"one of {', '.join(registry.METRICS)}, or your own: FILE.py:FUNCTION or "
                              "MODULE:FUNCTION")  # fmt: skip
        unknown = [name for name in self.orderings() if not registry.known_ordering(name)]
        if unknown:
            raise TrtmixError(
                f"Unknown ordering(s) {', '.join(unknown)}.", expected=", ".join(registry.ORDERINGS) + ", random-N"
            )
        self.timing_policy()  # its own checks: runs, warm-up, target
        if self.final_rounds < 0:
            raise TrtmixError(f"--final-rounds must be 0 or more (got {self.final_rounds}).")
        if self.relative_to not in ("high", "fp32"):
            raise TrtmixError(f"Unknown --relative-to {self.relative_to!r}.", expected="high or fp32")
        if self.backend not in registry.BACKENDS:
            raise TrtmixError(f"Unknown backend {self.backend!r}.", expected=f"one of {', '.join(registry.BACKENDS)}")
        get_flavour(self.flavour, self.weight_bits).check_backend(self.backend)
        if self.float_drop is not None and not 0 <= self.float_drop < 1:
            raise TrtmixError(f"--float-drop {self.float_drop} is out of range.", expected="a fraction in [0, 1)")
        self.smooth.validate()
        self.parallel.validate()

    @property
    def reference(self) -> str:
        """What budgets and accuracy percentages are relative to, in words."""
        return "the all-high plan" if self.relative_to == "high" else "the FP32 model"

    def orderings(self) -> Iterable[str]:
        """The primary ordering, then the comparison ones (each once)."""
        return dict.fromkeys([self.ordering, *self.compare])

    def identity(self, model_hash: str, engine: dict[str, Any]) -> str:
        """Hash of what makes measurements comparable: the model, these settings, the data's content, the engine.

        ``engine`` holds the flavour's options and the backend's name, version and settings.
        """
        settings = {key: asdict(self)[key] for key in MEASURED_SETTINGS}
        settings["metric"] = metric_identity(self.metric)  # a user metric's file content, not only its name
        identity = {"model": model_hash, "data_content": source_identity(self.data), "engine": engine, **settings}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
