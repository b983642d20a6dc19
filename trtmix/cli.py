"""The ``trtmix`` command line.  Each subcommand parses flags, calls the Python API and prints a summary.

Errors the user can fix print one message and exit with code 2 (``--verbose`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trtmix import __version__
from trtmix.errors import TrtmixError

LOG = logging.getLogger("trtmix")


def _add_export(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "export",
        help="export a torch model to ONNX",
        description=(
            "Export a torch model to ONNX and check it against torch on the sample input. MODULE:FUNCTION names a "
            "function (in an importable module or a .py file) that returns (model, sample_inputs)."
        ),
    )
    parser.add_argument(
        "factory", metavar="MODULE:FUNCTION", help="e.g. trtmix.models.tiny:convnet or ./model.py:build"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "legacy"),
        default="auto",
        help="torch exporter; auto = dynamo, falling back to legacy if it fails (default: auto)",
    )
    parser.add_argument("--opset", type=int, default=19, help="ONNX opset (default: 19; dynamo needs >= 18)")
    parser.add_argument(
        "--input-names",
        nargs="+",
        metavar="NAME",
        help="graph input names, one per sample input (default: input or input_0, input_1, ...)",
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="make axis 0 of every input and output dynamic")
    parser.add_argument(
        "--dynamic-axis",
        nargs="+",
        default=[],
        metavar="TENSOR:AXIS:NAME",
        help="mark more dynamic axes, e.g. input_ids:1:seq",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest accepted |onnx - torch| relative to the output magnitude (default: 1e-3)",
    )


def _add_units(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "units",
        help="list the quantizable units of an ONNX model",
        description="List the quantizable units (fusion groups) a precision plan can name.",
    )
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument("--json", action="store_true", help="print a JSON list (name, kind, op, nodes, macs, ...)")


def _add_calibrate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "calibrate",
        help="measure activation ranges once, for every later build",
        description="Run the float model over calibration data and save activation ranges.",
    )
    parser.add_argument("model", type=Path, help="float ONNX model")
    _add_data_flags(parser, required=False)
    parser.add_argument(
        "--from-tensorrt-cache",
        type=Path,
        metavar="FILE",
        help="import a TensorRT calibration cache (TRT-<version>-<Calibrator> header) instead of reading data",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="ranges JSON file to write")


def _add_data_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--data",
        required=required,
        metavar="RECIPE",
        help="data recipe: recipe.py[:func] or module:func yielding {input name: array}, or a .npz file",
    )
    parser.add_argument(
        "--split", default="calibration", help="split passed to recipes that take one (default: calibration)"
    )
    parser.add_argument("--batches", type=int, default=8, help="at most this many calibration batches (default: 8)")
    parser.add_argument(
        "--data-arg", nargs="+", default=[], metavar="KEY=VALUE", help="keyword arguments for the recipe or loader"
    )
    parser.add_argument(
        "--method",
        choices=("max", "percentile", "entropy", "mse"),
        default="max",
        help="activation range method: observed max, a percentile of |x|, TensorRT's entropy (KL) threshold, or "
        "the MSE-optimal threshold (default: max)",
    )
    parser.add_argument(
        "--percentile", type=float, default=99.99, help="percentile for --method percentile (default: 99.99)"
    )
    parser.add_argument(
        "--weights",
        choices=("max", "mse"),
        default="max",
        help="per-channel weight amax: max, or MSE-clipped (default: max)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="calibration cache folder (default: $TRTMIX_CACHE or ~/.cache/trtmix); results are keyed by model, data, "
        "split, batches and method",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")


def _add_build(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "build",
        help="write a precision plan into the graph (and build it)",
        description=(
            "Compile a precision plan into a mixed-precision ONNX model in the chosen flavour; with --artifact, also "
            "build it with the backend."
        ),
    )
    parser.add_argument("model", type=Path, help="float ONNX model")
    parser.add_argument(
        "--plan", required=True, help="plan JSON file, or int8 / fp16 / fp32 for every unit in that precision"
    )
    parser.add_argument(
        "--flavour",
        choices=("tensorrt", "ort-cpu"),
        default="tensorrt",
        help="tensorrt: s8 symmetric Q/DQ, fp16 graph; ort-cpu: u8/s8 Q/DQ, fp32 graph (default: tensorrt)",
    )
    parser.add_argument("--ranges", type=Path, help="activation ranges from `trtmix calibrate`")
    _add_data_flags(parser, required=False)
    parser.add_argument("-o", "--output", required=True, type=Path, help="mixed-precision ONNX file to write")
    parser.add_argument(
        "--backend", choices=("onnxruntime",), default="onnxruntime", help="engine backend (default: onnxruntime)"
    )
    parser.add_argument("--artifact", type=Path, help="also build the engine / optimised model here")


def _add_profile(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "profile",
        help="measure the latency of an ONNX model on a backend",
        description="Build the model with the backend and time it: warm-up, then N timed runs.",
    )
    parser.add_argument("model", type=Path, help="ONNX model (float or compiled)")
    parser.add_argument(
        "--backend", choices=("onnxruntime",), default="onnxruntime", help="engine backend (default: onnxruntime)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded warm-up runs (default: 3)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all usable cores)")
    parser.add_argument(
        "--data", metavar="RECIPE", help="time on the first batch of this recipe (default: random inputs)"
    )
    parser.add_argument(
        "--dim", nargs="+", metavar="NAME=N", help="values of symbolic input dims for random inputs (default 1)"
    )
    parser.add_argument("--json", action="store_true", help="print LatencyStats as JSON (median_ms, p90_ms, ...)")


def _add_demo(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "demo",
        help="run the embedded default job on MiniLM-L6",
        description=(
            "Export MiniLM-L6, list its units, calibrate, build the all-INT8 ort-cpu plan and time it against FP32 "
            "with ONNX Runtime; prints latency and fidelity on held-out sentences."
        ),
    )
    parser.add_argument(
        "--output", type=Path, default=Path("trtmix-demo"), help="folder for the artifacts (default: trtmix-demo)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (default: 20)")
    parser.add_argument(
        "--batches", type=int, default=4, help="calibration / holdout batches of 8 sentences (default: 4)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document every flag)."""
    parser = argparse.ArgumentParser(
        prog="trtmix",
        description=(
            "Mixed-precision (INT8 + FP16) deployment compiler: precision plans written into ONNX, built and timed."
        ),
    )
    parser.add_argument("--version", action="version", version=f"trtmix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_export, _add_units, _add_calibrate, _add_build, _add_profile, _add_demo):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trtmix`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    from trtmix import commands

    handler = getattr(commands, f"run_{args.command}")
    try:
        handler(args)
    except TrtmixError as err:
        if args.verbose:
            LOG.exception("failed")
        print(f"trtmix {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trtmix: interrupted", file=sys.stderr)
        return 130
    return 0


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
