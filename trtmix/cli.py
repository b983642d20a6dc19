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
        help="data recipe (recipe.py[:func] or module:func yielding {input name: array}), an image folder, or a .npz",
    )
    parser.add_argument(
        "--split", default="calibration", help="split passed to recipes that take one (default: calibration)"
    )
    parser.add_argument(
        "--data-arg", nargs="+", default=[], metavar="KEY=VALUE", help="keyword arguments for the recipe or loader"
    )
    _add_calibration_flags(parser)


def _add_calibration_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=8, help="at most this many calibration batches (default: 8)")
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
        "--backend",
        choices=("onnxruntime", "tensorrt"),
        default="onnxruntime",
        help="engine backend (default: onnxruntime)",
    )
    parser.add_argument("--artifact", type=Path, help="also build the engine / optimised model here")
    parser.add_argument(
        "--strict-precision",
        action="store_true",
        help="tensorrt: fail when the engine runs any unit in another precision",
    )
    _add_tensorrt_flags(parser)


def _add_tensorrt_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trt-shapes",
        nargs="+",
        default=[],
        metavar="NAME:MIN:OPT:MAX",
        help="tensorrt: optimisation profile of a dynamic input, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224",
    )
    parser.add_argument(
        "--workspace-mb", type=int, help="tensorrt: workspace memory pool limit in MiB (default: TensorRT's)"
    )
    parser.add_argument(
        "--builder-optimization-level",
        type=int,
        choices=range(6),
        help="tensorrt: builder optimisation level 0-5 (default: 3)",
    )


def _add_compile(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "compile",
        help="the whole job: find the fastest plan inside an accuracy budget",
        description="Export (if needed), calibrate, order the units, bisect along the order with every probe built "
        "and timed for real, check the chosen plan on the holdout split, and write the mixed-precision ONNX, the built "
        "artifact, plan.json, the trtexec command and the report (JSON, HTML, PNG). Rerunning resumes.",
    )
    parser.add_argument(
        "source", metavar="MODEL", help="MODULE:FUNCTION returning (model, sample_inputs), or a .onnx file"
    )
    parser.add_argument(
        "--data", required=True, metavar="RECIPE", help="data recipe with calibration/search/holdout splits"
    )
    parser.add_argument(
        "--data-arg", nargs="+", default=[], metavar="KEY=VALUE", help="keyword arguments for the recipe"
    )
    parser.add_argument(
        "--metric",
        choices=("agreement", "accuracy", "cosine"),
        default="agreement",
        help="agreement: top-1 agreement with the float model; accuracy: top-1 against the recipe's "
        "load_labels(split); cosine: mean cosine to the float outputs, for embedding models (default: agreement)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", help="largest accepted metric drop relative to float, e.g. 0.1%% (default: 1%%)")
    budget.add_argument(
        "--accuracy-range",
        metavar="LOW:HIGH",
        help="stop at the first plan scoring LOW..HIGH %% of float, e.g. 99.9:99.99",
    )
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt"),
        default="onnxruntime",
        help="engine backend (default: onnxruntime)",
    )
    parser.add_argument(
        "--flavour",
        choices=("tensorrt", "ort-cpu"),
        default="ort-cpu",
        help="graph flavour the backend builds (default: ort-cpu)",
    )
    parser.add_argument(
        "--ordering",
        choices=("kl", "noise", "random", "hessian", "augmented-a", "augmented-b", "augmented-c"),
        default="kl",
        help="unit ordering, least sensitive first; the Hessian-based ones need MODULE:FUNCTION (default: kl)",
    )
    parser.add_argument(
        "--compare-orderings", default="", metavar="A,B", help="also search along these orderings, same plot"
    )
    parser.add_argument(
        "--frontier", type=int, default=0, help="extra probes spread over k for the frontier (default: 0)"
    )
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="batches of the search / holdout splits evaluated (default: 8)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per probe (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded warm-up runs per probe (default: 3)")
    parser.add_argument("--threads", type=int, help="backend threads (default: all usable cores)")
    parser.add_argument(
        "--exporter", choices=("auto", "dynamo", "legacy"), default="auto", help="torch exporter (default: auto)"
    )
    parser.add_argument("--input-names", nargs="+", metavar="NAME", help="graph input names for a torch model")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("trtmix-out"), help="output folder (default: trtmix-out)"
    )
    parser.add_argument("--fresh", action="store_true", help="discard the journal and artifacts of a previous run")
    parser.add_argument(
        "--strict-precision", action="store_true", help="tensorrt: a probe whose engine ignores the plan fails"
    )
    _add_tensorrt_flags(parser)
    _add_calibration_flags(parser)


def _add_sensitivity(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "sensitivity",
        help="score every unit's sensitivity to INT8 (Hessian, inter-layer variants, baselines)",
        description="Compute per-unit sensitivity scores, their ranks and the ordering each method implies, with "
        "timings, into a JSON file (cached by model, data and settings).",
    )
    parser.add_argument(
        "source", metavar="MODEL", help="MODULE:FUNCTION (all methods) or model.onnx (kl, noise, random)"
    )
    parser.add_argument("--data", required=True, metavar="RECIPE", help="data recipe; its calibration split is used")
    parser.add_argument(
        "--data-arg", nargs="+", default=[], metavar="KEY=VALUE", help="keyword arguments for the recipe"
    )
    parser.add_argument(
        "--method",
        nargs="+",
        choices=("hessian", "augmented-a", "augmented-b", "augmented-c", "kl", "noise", "random"),
        default=["augmented-a"],
        help="methods to compute (default: augmented-a)",
    )
    parser.add_argument(
        "--metric",
        choices=("agreement", "accuracy", "cosine"),
        default="agreement",
        help="picks the loss: KL to the float model (agreement), cross-entropy (accuracy), MSE (cosine)",
    )
    parser.add_argument(
        "--flavour",
        choices=("tensorrt", "ort-cpu"),
        default="tensorrt",
        help="flavour of the measured variants (default: tensorrt)",
    )
    parser.add_argument("--sensitivity-batches", type=int, default=4, help="calibration batches used (default: 4)")
    parser.add_argument("--max-probes", type=int, default=20, help="Hutchinson probe limit (default: 20)")
    parser.add_argument(
        "--tol", type=float, default=0.05, help="stop when every trace changes less than this (default: 0.05)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the probes and of the random ordering (default: 0)"
    )
    parser.add_argument(
        "--augment-weight",
        type=float,
        default=0.5,
        help="weight of the Hessian rank in augmented scores (default: 0.5)",
    )
    parser.add_argument("--input-names", nargs="+", metavar="NAME", help="graph input names for a torch model")
    parser.add_argument("-o", "--output", required=True, type=Path, help="sensitivity JSON file to write")
    parser.add_argument(
        "--calibration-method",
        choices=("max", "percentile", "entropy", "mse"),
        default="max",
        help="activation range method for the quantizer being scored (default: max)",
    )
    parser.add_argument("--batches", type=int, default=8, help="calibration batches for the ranges (default: 8)")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: $TRTMIX_CACHE or ~/.cache/trtmix)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the caches")


def _add_profile(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "profile",
        help="measure the latency of an ONNX model on a backend",
        description="Build the model with the backend and time it: warm-up, then N timed runs.",
    )
    parser.add_argument("model", type=Path, help="ONNX model (float or compiled)")
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt"),
        default="onnxruntime",
        help="engine backend (default: onnxruntime)",
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
    _add_tensorrt_flags(parser)


def _add_trtexec(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "trtexec-cmd",
        help="print the trtexec command that builds a tensorrt-flavour ONNX on a TensorRT host",
        description="Print the equivalent trtexec line: strongly typed (precision from the graph), saved engine, "
        "shared timing cache, CUDA graphs, no host-device transfers in timing.",
    )
    parser.add_argument("model", help="tensorrt-flavour ONNX (from `trtmix build --flavour tensorrt`)")
    parser.add_argument("--engine", default="model.engine", help="engine file trtexec saves (default: model.engine)")
    parser.add_argument("--timing-cache", default="timing.cache", help="timing cache file (default: timing.cache)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[],
        metavar="NAME:MIN:OPT:MAX",
        help="dynamic input shapes, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224",
    )
    parser.add_argument("--no-cuda-graph", action="store_true", help="leave out --useCudaGraph")


def _add_demo(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "demo",
        help="run `compile` on an embedded model (MiniLM-L6 by default)",
        description="The embedded default job: `trtmix compile` on MiniLM-L6 (cosine >= 99%% of float) or "
        "EfficientNet-Lite0 (top-1 agreement >= 99.9%%) with the ONNX Runtime backend and the ort-cpu flavour; prints "
        "where the report is and a short summary.",
    )
    parser.add_argument(
        "--model", choices=("minilm", "efficientnet-lite0"), default="minilm", help="which model (default: minilm)"
    )
    parser.add_argument("--output", type=Path, default=Path("trtmix-demo"), help="output folder (default: trtmix-demo)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per probe (default: 20)")
    parser.add_argument("--frontier", type=int, default=2, help="extra frontier probes (default: 2)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trtmix`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    from trtmix import commands

    handler = getattr(commands, f"run_{args.command.replace('-', '_')}")
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
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
