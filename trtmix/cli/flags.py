"""Flag groups shared by several subcommands, with choices and help taken from ``trtmix.registry``.

Each group is declared once, so a flag is spelled, defaulted and documented the same in every command.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtmix import registry


class DeprecatedAlias(argparse.Action):
    """Store the value like the new flag, and say once on stderr that the old spelling is going away."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"trtmix: warning: {option_string} is deprecated and goes in the next release; use {self.new}",
              file=sys.stderr)  # fmt: skip
        setattr(namespace, self.dest, values)


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, else one clear usage error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more (got {value})")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def number(low: float, high: float | None = None, low_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` (or from it, without ``low_open``), up to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or (high is not None and value > high):
            span = f"{'above' if low_open else 'at least'} {low:g}" + (f" and at most {high:g}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {span} (got {text})")
        return value

    parse.__name__ = "number"
    return parse


def add_list_flag(parser: argparse.ArgumentParser, flag: str, metavar: str, help_text: str) -> None:
    """A flag taking one or more ``metavar`` items, also when repeated (``--data-arg a=1 --data-arg b=2``)."""
    parser.add_argument(flag, nargs="+", action="extend", default=[], metavar=metavar,
                        help=f"{help_text} (repeat it or list several)")  # fmt: skip


def add_data_flags(parser: argparse.ArgumentParser, required: bool, split: bool = False, help_text: str = "") -> None:
    """``--data`` (recipe, folder or .npz), ``--data-arg``, and with ``split`` the ``--split`` a recipe is given."""
    parser.add_argument(
        "--data",
        required=required,
        metavar="RECIPE",
        help=help_text
        or "data recipe (recipe.py[:func] or module:func yielding {input name: array}), an image folder, or a .npz",
    )
    add_list_flag(parser, "--data-arg", "KEY=VALUE", "keyword arguments for the recipe or loader")
    if split:
        parser.add_argument(
            "--split", default="calibration", help="split passed to recipes that take one (default: calibration)"
        )


def add_source_and_data(parser: argparse.ArgumentParser, source_help: str, data_help: str) -> None:
    """The ``MODEL`` positional (a torch factory or an ONNX file) and the required ``--data`` of a job."""
    parser.add_argument("source", metavar="MODEL", help=source_help)
    add_data_flags(parser, required=True, help_text=data_help)


def add_calibration_flags(parser: argparse.ArgumentParser, method_alias: bool = True) -> None:
    """Range method and its settings, batch count, weight method and the calibration cache.

    With ``method_alias``, ``--method`` is kept as a deprecated spelling of ``--calibration-method``.
    """
    add_choice_flag(parser, "--calibration-method", registry.CALIBRATION_METHODS, "max", "activation range method")
    if method_alias:
        parser.add_argument(
            "--method", dest="calibration_method", choices=tuple(registry.CALIBRATION_METHODS),
            action=DeprecatedAlias, new="--calibration-method", help="deprecated spelling of --calibration-method",
        )  # fmt: skip
    parser.add_argument(
        "--percentile", type=float, default=99.99, help="percentile for the percentile method (default: 99.99)"
    )
    parser.add_argument("--batches", type=whole(1), default=8,
                        help="at most this many calibration batches (default: 8)")  # fmt: skip
    add_choice_flag(parser, "--weights", registry.WEIGHT_METHODS, "max", "per-channel weight amax")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="calibration cache folder (default: $TRTMIX_CACHE or ~/.cache/trtmix); results are keyed by model, data, "
        "split, batches, method and the cache format",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")


def add_choice_flag(
    parser: argparse.ArgumentParser, flag: str, table: dict[str, str], default: str, what: str, **kwargs: Any
) -> None:
    """``flag`` choosing one name of a registry ``table``; the help lists every choice with its description."""
    parser.add_argument(flag, choices=tuple(table), default=default,
                        help=f"{what}: {registry.describe(table)} (default: {default})", **kwargs)  # fmt: skip


def add_flavour_flag(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    """``--flavour``: how the plan is written into the graph."""
    add_choice_flag(parser, "--flavour", registry.FLAVOURS, default, what)


def add_weight_bits_flag(parser: argparse.ArgumentParser) -> None:
    """``--weight-bits``: the ort-cpu flavour's weight width (default: by CPU detection)."""
    parser.add_argument(
        "--weight-bits", type=int, choices=(7, 8),
        help="ort-cpu weight width: 8 where the CPU has VNNI or AMX, else 7 (ONNX Runtime's u8xs8 kernels can "
        "saturate without them); the default detects the CPU, the report records the choice",
    )  # fmt: skip


def add_quantizer_flags(parser: argparse.ArgumentParser) -> None:
    """``--smooth-alpha``, ``--no-smooth``, ``--no-bias-correction``: how INT8 units are quantized."""
    parser.add_argument(
        "--smooth-alpha", type=float, metavar="A",
        help="SmoothQuant migration strength for MatMul/Gemm inputs, in (0, 1) (default: compile measures the "
        "all-INT8 graph with no smoothing, 0.5 and 0.8, and centred channels in the tensorrt flavour, and keeps the "
        "best; build and sensitivity, which measure nothing, do not smooth unless given this)",
    )
    parser.add_argument(
        "--no-smooth", action="store_true",
        help="no outlier-aware scaling in compile either, nor centred conv inputs: every unit reads its input as "
        "exported",
    )
    parser.add_argument(
        "--no-bias-correction", dest="bias_correction", action="store_false",
        help="keep each INT8 unit's bias as exported (default: the mean output shift int8 weight rounding causes, "
        "from the calibration data's per-channel means, is subtracted from it)",
    )  # fmt: skip


def smooth_settings(args: argparse.Namespace, measured: bool = True) -> Any:
    """The ``SmoothSettings`` the flags ask for (α checked here, before any work).

    ``measured``: the command measures its smoothing options (compile), so smoothing is on unless ``--no-smooth``;
    a command that measures nothing (build) smooths only with an explicit ``--smooth-alpha``: the expected-noise
    model's own α cost EfficientNet-Lite0 9-20 points of top-1 agreement.
    """
    from trtmix.quant.smooth import SmoothSettings

    enabled = not args.no_smooth and (measured or args.smooth_alpha is not None)
    settings = SmoothSettings(enabled=enabled, alpha=args.smooth_alpha)
    settings.validate()
    return settings


def add_backend_flag(parser: argparse.ArgumentParser, what: str = "engine backend") -> None:
    """``--backend``: the engine that builds, runs and times; ``auto`` in every command."""
    add_choice_flag(parser, "--backend", registry.BACKENDS, "auto", what)


def add_metric_flag(parser: argparse.ArgumentParser, what: str = "the accuracy metric", user: bool = False) -> None:
    """``--metric``: how a plan's outputs are scored against the float model's (default ``auto``: fits the output).

    With ``user``, also the user's own function (``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``), checked by the job.
    """
    if not user:
        add_choice_flag(parser, "--metric", registry.METRICS, "auto", what)
        return
    parser.add_argument("--metric", default="auto", metavar="NAME|FILE.py:FUNCTION",
                        help=f"{what}: {registry.describe(registry.METRICS)}; or your own function over a whole split, "
                        "higher is better: score(candidate, reference, extras) -> float, where candidate and reference "
                        "map every graph output name to its arrays and extras is the recipe's load_extras(split) "
                        "(README: 'Your own metric') (default: auto)")  # fmt: skip


def add_timing_flags(parser: argparse.ArgumentParser, what: str = "per probe") -> None:
    """``--runs``, ``--warmup`` and ``--threads`` of latency measurements."""
    parser.add_argument("--runs", type=whole(1), default=20, help=f"timed runs {what} (default: 20)")
    parser.add_argument("--warmup", type=whole(0), default=3, help=f"discarded warm-up runs {what} (default: 3)")
    parser.add_argument("--threads", type=whole(1), help="backend threads (default: all usable cores)")


def add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--ray-address``: independent work on Ray (the ``trtmix[ray]`` extra)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers", type=whole(0), default=0, metavar="N",
        help="start a local Ray instance with N one-core workers and share the independent work among them: the kl "
        "ordering's unit scores (and augmented-b's builds), frontier probes, and the bisection points that may come "
        "next (k-section); latency is still measured one probe at a time with nothing else running (default: 0, "
        "serial, no Ray)",
    )
    group.add_argument(
        "--ray-address", metavar="auto|HOST:PORT",
        help="join a running Ray cluster instead (`ray start` on each host; see the README section 'Running on several "
        "workers or a cluster')",
    )


def parallel_settings(args: argparse.Namespace) -> Any:
    """The ``ParallelSettings`` of ``--workers`` / ``--ray-address``, checked before any work."""
    from trtmix.parallel.cluster import ParallelSettings

    settings = ParallelSettings(workers=args.workers, address=args.ray_address)
    settings.validate()
    return settings


NOISE_FLAGS = (  # flag, type, default, help: how probes are timed and the final choice is made under noise
    ("--timing-target", str, "3%", "time each probe until the 95%% interval of its median is within ± this, e.g. 3%%; "
                                   "0 times exactly --runs"),
    ("--max-runs", whole(1), 200, "timed runs per probe at most"),
    ("--max-timing-seconds", number(0), 10.0, "seconds of timing per probe at most"),
    ("--final-rounds", whole(0), 12, "interleaved rounds that re-time the feasible plans within noise of the fastest "
                                "before choosing; the high-precision plan is kept unless beaten with confidence; 0 "
                                "chooses by the search's medians"),
)  # fmt: skip


def add_noise_flags(parser: argparse.ArgumentParser) -> None:
    """``compile``'s adaptive timing and final-choice flags (``NOISE_FLAGS``)."""
    for flag, kind, default, text in NOISE_FLAGS:
        shown = str(default).replace("%", "%%")
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {shown})")


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    """``--exporter`` and ``--input-names`` of a torch export."""
    add_choice_flag(parser, "--exporter", registry.EXPORTERS, "auto", "torch exporter")
    parser.add_argument(
        "--input-names",
        nargs="+",
        metavar="NAME",
        help="graph input names, one per sample input (default: the names of forward()'s parameters)",
    )


def add_tensorrt_flags(parser: argparse.ArgumentParser, strict: bool = True) -> None:
    """TensorRT build options (used with ``--backend tensorrt``); ``strict`` adds ``--strict-precision``."""
    example = "input:1x3x224x224:8x3x224x224:32x3x224x224"
    add_list_flag(parser, "--trt-shapes", "NAME:MIN:OPT:MAX", f"tensorrt: profile of a dynamic input, e.g. {example}")
    parser.add_argument(
        "--workspace-mb", type=whole(1), help="tensorrt: workspace memory pool limit in MiB (default: TensorRT's)"
    )
    parser.add_argument(
        "--builder-optimization-level",
        type=int,
        choices=range(6),
        help="tensorrt: builder optimisation level 0-5 (default: 3)",
    )
    parser.add_argument(
        "--no-tf32", action="store_true",
        help="tensorrt: disallow TF32 in every graph (default: TF32 is already off in any graph with a conv or matmul "
        "computing in float32, so a unit planned FP32 runs FP32; TensorRT itself would allow it)",
    )
    if strict:
        parser.add_argument(
            "--strict-precision",
            action="store_true",
            help="tensorrt: fail when the engine runs any unit in another precision than the plan",
        )
