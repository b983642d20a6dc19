"""The ``trtmix`` command line.  Each subcommand parses flags, calls the Python API and prints a summary.

Errors the user can fix print one message and exit with code 2 (``--verbose`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from trtmix import __version__, registry
from trtmix.cli import flags
from trtmix.errors import TrtmixError
from trtmix.progress import set_quiet

LOG = logging.getLogger("trtmix")


SUBCOMMANDS: dict[str, dict[str, str]] = {
    "export": dict(
        help="export a torch model to ONNX",
        description=(
            "Export a torch model to ONNX and check it against torch on the sample input. MODULE:FUNCTION names a "
            "function (in an importable module or a .py file) that returns (model, sample_inputs)."
        ),
    ),
    "units": dict(
        help="list the quantizable units of an ONNX model",
        description="List the quantizable units (fusion groups) a precision plan can name.",
    ),
    "calibrate": dict(
        help="measure activation ranges once, for every later build",
        description="Run the float model over calibration data and save activation ranges.",
    ),
    "build": dict(
        help="write a precision plan into the graph (and build it)",
        description=(
            "Compile a precision plan into a mixed-precision ONNX model in the chosen flavour, checked by the "
            "flavour's rules; with --artifact, also build it with the backend."
        ),
    ),
    "compile": dict(
        help="the whole job: find the fastest plan inside an accuracy budget",
        description="Export (if needed), calibrate, order the units, bisect along the order with every probe built "
        "and timed for real, check the chosen plan on the holdout split, and write the mixed-precision ONNX, the built "
        "artifact, plan.json, the trtexec command and the report (JSON, HTML, PNG). Rerunning resumes.",
    ),
    "sensitivity": dict(
        help="score every unit's sensitivity to INT8 (Hessian, inter-layer variants, baselines)",
        description="Compute per-unit sensitivity scores, their ranks and the ordering each method implies, with "
        "timings, into a JSON file (cached by model, data and settings).",
    ),
    "profile": dict(
        help="measure the latency of an ONNX model on a backend",
        description="Build the model with the backend and time it: warm-up, then N timed runs.",
    ),
    "trtexec-cmd": dict(
        help="print the trtexec command that builds a tensorrt-flavour ONNX on a TensorRT host",
        description="Print the equivalent trtexec line: strongly typed (precision from the graph), saved engine, "
        "shared timing cache, CUDA graphs, no host-device transfers in timing.",
    ),
    "demo": dict(
        help="run `compile` on an embedded model (MiniLM-L6 by default)",
        description="The embedded default job: `trtmix compile` on MiniLM-L6 (cosine >= 99%% of the all-FP16 plan) "
        "or EfficientNet-Lite0 (top-1 agreement >= 99.9%%) in the tensorrt flavour, built, timed and verified by "
        "OpenVINO (or a real TensorRT where one imports); prints where the report is and a short summary.",
    ),
}


def _parser(commands: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """The subcommand ``name`` with its summary and description from ``SUBCOMMANDS``."""
    parser: argparse.ArgumentParser = commands.add_parser(name, **SUBCOMMANDS[name])
    return parser


def _add_export(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "export")
    parser.add_argument(
        "factory", metavar="MODULE:FUNCTION", help="e.g. trtmix.models.tiny:convnet or ./model.py:build"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    flags.add_export_flags(parser)
    parser.add_argument("--opset", type=flags.whole(7), default=19, help="ONNX opset (default: 19; dynamo needs >= 18)")
    parser.add_argument("--dynamic-batch", action="store_true", help="make axis 0 of every input and output dynamic")
    flags.add_list_flag(parser, "--dynamic-axis", "TENSOR:AXIS:NAME", "mark more dynamic axes, e.g. input_ids:1:seq")
    parser.add_argument(
        "--tolerance",
        type=flags.number(0),
        default=1e-3,
        help="largest accepted |onnx - torch| relative to the output magnitude (default: 1e-3)",
    )


def _add_units(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "units")
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument("--json", action="store_true", help="print a JSON list (name, kind, op, nodes, macs, ...)")


def _add_calibrate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "calibrate")
    parser.add_argument("model", type=Path, help="float ONNX model")
    flags.add_data_flags(parser, required=False, split=True)
    flags.add_calibration_flags(parser)
    parser.add_argument(
        "--from-tensorrt-cache",
        type=Path,
        metavar="FILE",
        help="import a TensorRT calibration cache (TRT-<version>-<Calibrator> header) instead of reading data",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="ranges JSON file to write")


def _add_build(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "build")
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument(
        "--plan", required=True, help="plan JSON file, or int8 / fp16 / fp32 for every unit in that precision"
    )
    flags.add_flavour_flag(parser, "tensorrt", "how the plan is written")
    flags.add_weight_bits_flag(parser)
    flags.add_quantizer_flags(parser)
    parser.add_argument("--ranges", type=Path, help="activation ranges from `trtmix calibrate`")
    flags.add_data_flags(parser, required=False, split=True, help_text="calibrate on this data when --ranges is absent")
    flags.add_calibration_flags(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="mixed-precision ONNX file to write")
    flags.add_backend_flag(parser)
    parser.add_argument("--artifact", type=Path, help="also build the engine / optimised model here")
    flags.add_tensorrt_flags(parser)


def _add_compile(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "compile")
    flags.add_source_and_data(parser, "MODULE:FUNCTION returning (model, sample_inputs), or a .onnx file",
                              "data recipe with calibration/search/holdout splits")  # fmt: skip
    flags.add_metric_flag(parser, user=True)
    parser.add_argument(
        "--kl-exact", action="store_true",
        help="score each unit for the kl/gain orderings on its own compiled graph and session (slow, exact) instead "
        "of one graph with a switch per unit (the default; fake-quant semantics)",
    )
    parser.add_argument(
        "--groups", action="store_true",
        help="decide units in groups: units reading one tensor (Q/K/V projections) and chains with nothing between "
        "them flip together, as one bisection step; the report compares each group's saving with its members' "
        "(default: every unit is its own step)",
    )
    parser.add_argument(
        "--score-output", metavar="NAME",
        help="the graph output the metric scores, for models with several (default: the first; the summary names it)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", help="largest accepted metric drop relative to float, e.g. 0.1%% (default: 1%%)")
    budget.add_argument(
        "--accuracy-range",
        metavar="LOW:HIGH",
        help="stop at the first plan scoring LOW..HIGH %% of float, e.g. 99.9:99.99",
    )
    flags.add_backend_flag(parser)
    flags.add_flavour_flag(parser, "tensorrt", "graph flavour the backend builds")
    flags.add_weight_bits_flag(parser)
    flags.add_quantizer_flags(parser)
    parser.add_argument(
        "--relative-to",
        choices=("high", "fp32"),
        default="high",
        help="what budgets and accuracy percentages are relative to: high = the all-high-precision plan (all FP16 in "
        "the tensorrt flavour, the paper's baseline), fp32 = the exported float model (default: high)",
    )
    parser.add_argument(
        "--float-drop", metavar="DROP",
        help="tensorrt flavour: what the all-high (float16) plan may lose against the FP32 model on the search split "
        "before float regions are kept in FP32, e.g. 0.05%% (default: a tenth of --max-drop, at least 0.01%%)",
    )
    parser.add_argument(
        "--no-range-choice", dest="range_choice", action="store_false",
        help="skip the per-tensor range choice (default: each activation's range method is chosen by the least "
        "error at its readers' outputs on the calibration batches, and that graph is kept only if the job's metric "
        "scores it higher than --calibration-method's ranges; needs 2 or more calibration batches)",
    )  # fmt: skip
    parser.add_argument(
        "--no-weight-rounding", dest="weight_rounding", action="store_false",
        help="round INT8 weights to nearest (default: each unit's int8 weights are also learned on the calibration "
        "batches, GPTQ-style with the scales fixed, and kept only if the all-INT8 graph scores higher with them; "
        "needs 2 or more calibration batches)",
    )  # fmt: skip
    ordering_help = "unit ordering, least sensitive first; the Hessian-based ones need MODULE:FUNCTION"
    flags.add_choice_flag(parser, "--ordering", registry.ORDERINGS, "kl", ordering_help)
    parser.add_argument(
        "--compare-orderings", default="", metavar="A,B", help="also search along these orderings, same plot"
    )
    parser.add_argument(
        "--frontier", type=flags.whole(0), default=0, help="extra probes spread over k for the frontier (default: 0)"
    )
    parser.add_argument(
        "--eval-batches", type=flags.whole(1), default=8,
        help="batches of the search / holdout splits evaluated (default: 8)",
    )
    flags.add_timing_flags(parser)
    flags.add_noise_flags(parser)
    flags.add_parallel_flags(parser)
    flags.add_export_flags(parser)
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("trtmix-out"), help="output folder (default: trtmix-out)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard the journal, artifacts and export stamp of a previous run"
    )
    flags.add_tensorrt_flags(parser)
    flags.add_calibration_flags(parser)


def _add_sensitivity(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "sensitivity")
    flags.add_source_and_data(parser, "MODULE:FUNCTION (all methods) or model.onnx (kl, noise, random)",
                              "data recipe; its calibration split is used")  # fmt: skip
    parser.add_argument(
        "--method",
        nargs="+",
        choices=tuple(registry.SENSITIVITY_METHODS),
        default=["augmented-a"],
        help=f"methods to compute: {registry.describe(registry.SENSITIVITY_METHODS)} (default: augmented-a)",
    )
    flags.add_metric_flag(parser, "picks the loss: KL to the float model (agreement), cross-entropy (accuracy), MSE "
                                  "(cosine)")  # fmt: skip
    flags.add_flavour_flag(parser, "tensorrt", "flavour of the measured variants")
    flags.add_weight_bits_flag(parser)
    flags.add_quantizer_flags(parser)  # the quantizer every method scores, chosen as build chooses it
    parser.add_argument("--sensitivity-batches", type=flags.whole(1), default=4,
                        help="calibration batches used (default: 4)")  # fmt: skip
    parser.add_argument("--max-probes", type=flags.whole(1), default=20, help="Hutchinson probe limit (default: 20)")
    parser.add_argument(
        "--tol", type=flags.number(0), default=0.05, help="stop when every trace changes less than this (default: 0.05)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the probes and of the random ordering (default: 0)"
    )
    parser.add_argument(
        "--augment-weight",
        type=flags.number(0, 1, low_open=False),
        default=0.5,
        help="weight of the Hessian rank in augmented scores (default: 0.5)",
    )
    parser.add_argument("--input-names", nargs="+", metavar="NAME", help="graph input names for a torch model")
    parser.add_argument("-o", "--output", required=True, type=Path, help="sensitivity JSON file to write")
    flags.add_parallel_flags(parser)
    flags.add_calibration_flags(parser, method_alias=False)


def _add_profile(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "profile")
    parser.add_argument("model", type=Path, help="ONNX model (float or compiled)")
    flags.add_backend_flag(parser, what="engine backend (auto: the engine of the flavour trtmix wrote the graph in, "
                           "read from its trtmix.flavour property; any other graph as the tensorrt flavour, as compile "
                           "and build do)")  # fmt: skip
    flags.add_timing_flags(parser, what="")
    flags.add_data_flags(parser, required=False, help_text="time on the first calibration batch of this recipe, "
                         "image folder or .npz (default: random inputs shaped by the graph and --dim)")  # fmt: skip
    parser.add_argument(
        "--dim", nargs="+", metavar="NAME=N",
        help="values of the symbolic input dims for random inputs; each is required without --data "
        "(INPUT:AXIS names one the graph left unnamed)",
    )
    parser.add_argument("--json", action="store_true", help="print LatencyStats as JSON (median_ms, p90_ms, ...)")
    flags.add_tensorrt_flags(parser, strict=False)


def _add_trtexec(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "trtexec-cmd")
    parser.add_argument("model", help="tensorrt-flavour ONNX (from `trtmix build --flavour tensorrt`)")
    parser.add_argument("--engine", default="model.engine", help="engine file trtexec saves (default: model.engine)")
    parser.add_argument("--timing-cache", default="timing.cache", help="timing cache file (default: timing.cache)")
    flags.add_list_flag(parser, "--shapes", "NAME:MIN:OPT:MAX",
                        "dynamic input shapes, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224")  # fmt: skip
    parser.add_argument("--no-cuda-graph", action="store_true", help="TensorRT 10: leave out --useCudaGraph")
    parser.add_argument(
        "--tensorrt-major",
        type=int,
        choices=(10, 11),
        default=10,
        help="the TensorRT major version the line is for: 11 drops the deprecated --stronglyTyped, --useCudaGraph "
        "and --noDataTransfers (its defaults) (default: 10)",
    )
    parser.add_argument("--workspace-mb", type=flags.whole(1), help="workspace memory pool limit in MiB")
    parser.add_argument("--builder-optimization-level", type=int, choices=range(6), help="builder optimisation level")
    parser.add_argument("--no-tf32", action="store_true",
                        help="add --noTF32 (default: added when a conv or matmul of the graph computes in float32, "
                        "as trtmix's own builds do)")  # fmt: skip


def _add_demo(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _parser(commands, "demo")
    parser.add_argument(
        "--model", choices=("minilm", "efficientnet-lite0"), default="minilm", help="which model (default: minilm)"
    )
    parser.add_argument("--output", type=Path, default=Path("trtmix-demo"), help="output folder (default: trtmix-demo)")
    parser.add_argument("--runs", type=flags.whole(1), default=20, help="timed runs per probe (default: 20)")
    parser.add_argument("--frontier", type=flags.whole(0), default=2, help="extra frontier probes (default: 2)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming")


class Parser(argparse.ArgumentParser):
    """argparse with a short error: the message and where the flags are explained, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and the ``--help`` to read, and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help` for every flag)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document every flag)."""
    parser = Parser(
        prog="trtmix",
        description=(
            "Mixed-precision (INT8 + FP16) deployment compiler: precision plans written into ONNX, built and timed."
        ),
    )
    parser.add_argument("--version", action="version", version=f"trtmix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_export,
        _add_units,
        _add_calibrate,
        _add_sensitivity,
        _add_build,
        _add_profile,
        _add_compile,
        _add_trtexec,
        _add_demo,
    ):
        add(commands)
    return parser


REPORT_TO = "the trtmix issue tracker (README: 'Reporting a problem')"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trtmix`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    set_quiet(args.quiet)
    from trtmix.cli import commands

    handler = getattr(commands, f"run_{args.command.replace('-', '_')}")
    try:
        handler(args)
    except TrtmixError as err:
        if args.verbose:  # the whole chain, the user's own exception and its frames included
            traceback.print_exception(err, file=sys.stderr)
        print(f"trtmix {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"trtmix {args.command}: interrupted; nothing was written half-way (every write is atomic)",
              file=sys.stderr)  # fmt: skip
        return 130
    except Exception as err:  # noqa: BLE001 - a bug (ours or a library's): one message, the traceback on request
        _report_bug(err, args, argv)
        return 1
    return 0


def _report_bug(err: Exception, args: argparse.Namespace, argv: list[str] | None) -> None:
    """An unexpected exception as one message: what failed, the version, the command, and where to report it."""
    if args.verbose:
        traceback.print_exception(err, file=sys.stderr)
    command = " ".join(["trtmix", *(sys.argv[1:] if argv is None else argv)])
    hint = "the traceback is above" if args.verbose else "rerun with --verbose for the traceback"
    print(f"trtmix {args.command}: unexpected error: {type(err).__name__}: {err}\n"
          f"This is a bug in trtmix {__version__} or in a library it calls, not in your input.\n"
          f"Command: {command}\n"
          f"Fix: {hint}, and report it with that output to {REPORT_TO}", file=sys.stderr)  # fmt: skip


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
