"""What each CLI subcommand does with its parsed flags: call the API, print a human (or JSON) summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from typing import Any

import onnx

from trtmix import api
from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.calibration.ranges import Ranges
from trtmix.calibration.tensorrt_cache import ranges_from_tensorrt_cache
from trtmix.cli.flags import parallel_settings, smooth_settings
from trtmix.data.feeds import parse_dims, tensorrt_settings, timing_feeds
from trtmix.data.recipes import parse_data_args
from trtmix.data.user_code import load_model_factory
from trtmix.errors import TrtmixError
from trtmix.ir.domains import describe as describe_foreign
from trtmix.ir.domains import foreign_ops
from trtmix.ir.fold import load_float_model
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import require_units, units_to_json
from trtmix.job.config import CompileConfig
from trtmix.job.summary import summary_lines
from trtmix.quant.flavours import get_flavour
from trtmix.runtime import resolve_backend
from trtmix.search.bisection import Budget, parse_fraction
from trtmix.sensitivity.run import SensitivitySettings

LOG = logging.getLogger(__name__)


def run_export(args: argparse.Namespace) -> None:
    """``trtmix export``."""
    from trtmix.export import export_onnx, forward_input_names

    model, samples = load_model_factory(args.factory)
    names = args.input_names or forward_input_names(model, len(samples))
    report = export_onnx(
        model,
        samples,
        args.output,
        exporter=args.exporter,
        opset=args.opset,
        dynamic_axes=_dynamic_axes(args, names),
        input_names=names,
        tolerance=args.tolerance,
    )
    print(
        f"wrote {report.path}: {report.exporter} exporter, opset {report.opset}, {report.nodes} nodes, "
        f"max |onnx - torch| = {report.max_abs_diff:.3g}, {len(report.module_map)} nodes mapped to torch modules"
    )


def _dynamic_axes(args: argparse.Namespace, names: list[str]) -> dict[str, dict[int, str]] | None:
    axes: dict[str, dict[int, str]] = {}
    if args.dynamic_batch:
        for name in names:
            axes.setdefault(name, {})[0] = "batch"
    for item in args.dynamic_axis:
        tensor, axis, label = (item.split(":") + ["", ""])[:3]
        if not tensor or not axis.isdigit() or not label:
            raise TrtmixError(f"Bad --dynamic-axis {item!r}.", expected="TENSOR:AXIS:NAME, e.g. input_ids:1:seq")
        axes.setdefault(tensor, {})[int(axis)] = label
    return axes or None


def run_units(args: argparse.Namespace) -> None:
    """``trtmix units``."""
    model = load_float_model(args.model)  # the units every other command sees (BatchNormalization folded)
    units = require_units(model, str(args.model))
    foreign = foreign_ops(model)
    if foreign:  # on stderr, so `--json` stays one JSON document on stdout
        print(f"not quantizable (ops outside the standard ONNX domain):\n{describe_foreign(foreign)}", file=sys.stderr)
    if args.json:
        print(units_to_json(units))
        return
    width = max(len(u.name) for u in units)
    print(f"{'unit':<{width}}  {'kind':<9} {'op':<6} {'MACs':>14}  nodes / torch module")
    for unit in units:
        nodes = "+".join(_short(n) for n in unit.nodes)
        module = f"  ({unit.module})" if unit.module else ""
        print(f"{unit.name:<{width}}  {unit.kind:<9} {unit.op:<6} {unit.macs:>14,}  {nodes}{module}")
    kinds = Counter(u.kind for u in units)
    print(f"{len(units)} units: " + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())))


def _short(node_name: str) -> str:
    return node_name.rsplit("/", 1)[-1]


def _ranges_from_data(args: argparse.Namespace) -> Ranges:
    """Ranges from ``--data`` with the calibration flags (cached unless ``--no-cache``)."""
    cache = None if args.no_cache else (args.cache_dir or api.default_cache_dir())
    return api.collect_ranges(
        args.model, args.data, args.split, _calibration(args), data_args=parse_data_args(args.data_arg), cache_dir=cache
    )


def _calibration(args: argparse.Namespace) -> CalibrationConfig:
    """The calibration flags (``flags.add_calibration_flags``) as a config."""
    return CalibrationConfig(
        method=args.calibration_method, percentile=args.percentile, batches=args.batches, weights=args.weights
    )


def run_calibrate(args: argparse.Namespace) -> None:
    """``trtmix calibrate``."""
    if bool(args.data) == bool(args.from_tensorrt_cache):
        raise TrtmixError("Give exactly one of --data and --from-tensorrt-cache.", fix="see `trtmix calibrate --help`")
    if args.from_tensorrt_cache:
        ranges, unmatched = ranges_from_tensorrt_cache(args.from_tensorrt_cache, load_float_model(args.model))
        if unmatched:
            LOG.warning("%d cache tensors are not in the model: %s", len(unmatched), ", ".join(unmatched[:5]))
        source = f"TensorRT cache {args.from_tensorrt_cache}"
    else:
        ranges = _ranges_from_data(args)
        source = f"{args.calibration_method}, {ranges.meta.get('batches_seen', args.batches)} batches of {args.split}"
    ranges.save(args.output)
    weights = f", {len(ranges.weights)} weight tensors" if ranges.weights else ""
    print(f"wrote {args.output}: ranges of {len(ranges.tensors)} tensors{weights} ({source})")


def run_build(args: argparse.Namespace) -> None:
    """``trtmix build``."""
    if args.strict_precision and not args.artifact:  # before any work
        raise TrtmixError("--strict-precision checks the built engine, and nothing is built without --artifact.",
                          fix="add --artifact PATH (and --data for the engine's input shapes)")  # fmt: skip
    args.backend = resolve_backend(args.backend, args.flavour)
    get_flavour(args.flavour, args.weight_bits).check_backend(args.backend)  # before any calibration work
    tensorrt, feeds = tensorrt_settings(args), None
    if args.backend == "tensorrt":
        engine = api.get_backend("tensorrt", tensorrt=tensorrt)  # says clearly, before any work, when it is missing
        if args.artifact and args.data:  # the probe's feed: profiles for dynamic inputs, and the inspector's shapes
            model = load_onnx(args.model)
            feeds = timing_feeds(model, args.data, {}, data_args=parse_data_args(args.data_arg))
            tensorrt["profiles"] = engine.cover_feeds(model, [feeds])  # type: ignore[attr-defined]
    ranges = Ranges.load(args.ranges) if args.ranges else None
    if ranges is None and args.data:
        ranges = _ranges_from_data(args)
    result = api.build(
        args.model,
        args.plan,
        args.output,
        flavour=args.flavour,
        ranges=ranges,
        backend=args.backend,
        artifact=args.artifact,
        tensorrt=tensorrt,
        weight_bits=args.weight_bits,
        smooth=smooth_settings(args, measured=False),
        bias_correction=args.bias_correction,
    )
    print(
        f"wrote {result.onnx_path}: {args.flavour} flavour, {len(result.int8_units)} of {result.unit_count} "
        f"units INT8, {result.qdq_nodes} Q/DQ nodes, plan {result.plan.stable_hash()}"
        + (f", {result.weight_bits}-bit weights" if args.flavour == "ort-cpu" else "")
    )
    if result.artifact:
        print(f"built {result.artifact} with {args.backend}")
        _verify_engine(result, args, feeds, tensorrt)


def _verify_engine(result: api.BuildResult, args: argparse.Namespace, feeds: dict[str, Any] | None,
                   tensorrt: dict[str, object]) -> None:  # fmt: skip
    """Compare the engine's layer precisions with the plan (TensorRT, OpenVINO); fatal with --strict-precision.

    The engine sees ``feeds`` (the recipe's first batch): TensorRT's inspector needs their shapes for a
    dynamic-shape engine, OpenVINO runs the graph on them.  ONNX Runtime reports no per-layer precision.
    """
    from trtmix.job.engine_check import describe, mismatches, not_found

    checks = _engine_checks(result, args, feeds, tensorrt)
    if checks is None:
        if args.strict_precision:
            raise TrtmixError(
                f"--strict-precision: {args.backend} reports no per-layer precision, so the engine cannot be checked "
                "against the plan.", fix="build with --backend openvino or tensorrt, or leave --strict-precision out")
        return
    wrong, missing = mismatches(checks), not_found(checks)
    if missing:
        print(f"note: {len(missing)} unit(s) not found among the engine's layers, so not checked: "
              f"{', '.join(c.unit for c in missing[:8])}")  # fmt: skip
    if not wrong:
        print(f"engine verified: {len(checks) - len(missing)} of {len(checks)} units run their planned precision")
    elif args.strict_precision:
        raise TrtmixError(f"--strict-precision: the engine does not run the plan:\n{describe(wrong)}")
    else:
        print(f"warning: {len(wrong)} units do not run their planned precision:\n{describe(wrong)}")


def _engine_checks(result: api.BuildResult, args: argparse.Namespace, feeds: dict[str, Any] | None,
                   tensorrt: dict[str, object]) -> list[Any] | None:  # fmt: skip
    """Each unit's planned precision against the engine's own report; None where the backend reports none."""
    from trtmix.job.engine_check import check_layers, check_plan, topology

    if args.backend == "tensorrt":
        backend = api.get_backend("tensorrt", tensorrt=tensorrt)
        if feeds is None:
            print("note: no --data, so the engine is inspected without input shapes (a dynamic-shape engine then "
                  "reports its units unknown)")  # fmt: skip
        information = backend.engine_information(result.artifact, feeds)  # type: ignore[attr-defined]
        return check_plan(information, api.list_units(result.source), result.plan)
    if args.backend != "openvino":
        return None
    model = load_float_model(result.source)
    if feeds is None:  # the recipe's first batch, or random inputs where the graph's shapes are all fixed
        feeds = timing_feeds(model, args.data, {}, data_args=parse_data_args(args.data_arg))
    consumers, node_outputs = topology(model)
    layers = api.get_backend("openvino").engine_layers(result.artifact, feeds)  # type: ignore[attr-defined]
    return check_layers(layers, require_units(model, str(result.source)), result.plan, False, consumers,
                        node_outputs)  # fmt: skip


def run_profile(args: argparse.Namespace) -> None:
    """``trtmix profile``: ``--backend auto`` picks the engine of the flavour the graph was written in."""
    data_args = parse_data_args(args.data_arg)
    model = load_onnx(args.model)
    args.backend = resolve_backend(args.backend, graph_flavour(model))
    feeds = timing_feeds(model, args.data, parse_dims(args.dim), data_args=data_args)
    stats = api.profile(args.model, feeds, args.backend, args.runs, args.warmup, args.threads, tensorrt_settings(args))
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in feeds.items())
    print(
        f"{args.model} on {args.backend} ({stats.threads} threads, {shapes}): median {stats.median_ms:.2f} ms, "
        f"p90 {stats.p90_ms:.2f} ms, mean {stats.mean_ms:.2f} ± {stats.stdev_ms:.2f} ms over {stats.runs} runs"
    )


def graph_flavour(model: onnx.ModelProto) -> str:
    """The flavour a trtmix graph was written in (its ``trtmix.flavour`` property); any other graph: tensorrt."""
    properties = {prop.key: prop.value for prop in model.metadata_props}
    return properties.get("trtmix.flavour", "tensorrt")


def run_sensitivity(args: argparse.Namespace) -> None:
    """``trtmix sensitivity``."""
    from trtmix.sensitivity.cached import sensitivity_for

    settings = SensitivitySettings(
        methods=tuple(args.method), metric=args.metric, flavour=args.flavour, batches=args.sensitivity_batches,
        max_probes=args.max_probes, tol=args.tol, seed=args.seed, augment_weight=args.augment_weight,
    )  # fmt: skip
    cache = None if args.no_cache else (args.cache_dir or api.default_cache_dir())
    result = sensitivity_for(
        args.source, args.data, parse_data_args(args.data_arg), settings, _calibration(args), args.output,
        input_names=args.input_names, cache_dir=cache, parallel=parallel_settings(args),
        smooth=smooth_settings(args, measured=False), bias_correction=args.bias_correction,
        weight_bits=args.weight_bits,
    )  # fmt: skip
    print(f"wrote {args.output}: {len(result['units'])} units, methods {', '.join(settings.methods)}")
    print(f"  {result['quantizers']['summary']}")
    for method in settings.methods:
        order = result["orderings"][method]
        print(f"  {method}: most sensitive {', '.join(order[-3:][::-1])}; least {', '.join(order[:3])}")
    timings = result["timings_seconds"]
    listed = ", ".join(f"{name} {seconds:.1f}" for name, seconds in timings.items())
    print(f"  timings (s): {listed}; total {sum(timings.values()):.1f}")
    if result["unscored_by_hessian"]:
        print(f"  placed by their measured kl score: {', '.join(result['unscored_by_hessian'])}")


def _compile_config(args: argparse.Namespace) -> CompileConfig:
    budget = (
        Budget.parse(args.max_drop, args.accuracy_range)
        if (args.max_drop or args.accuracy_range)
        else Budget.parse("1%")
    )
    compare = tuple(name.strip() for name in args.compare_orderings.split(",") if name.strip())
    config = CompileConfig(
        data=args.data,
        budget=budget,
        metric=args.metric,
        flavour=args.flavour,
        backend=args.backend,
        ordering=args.ordering,
        compare=compare,
        frontier=args.frontier,
        calibration=_calibration(args),
        data_args=tuple(sorted(parse_data_args(args.data_arg).items())),
        eval_batches=args.eval_batches,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        exporter=args.exporter,
        input_names=tuple(args.input_names or ()),
        strict_precision=args.strict_precision,
        tensorrt=tuple(sorted((k, json.dumps(v)) for k, v in tensorrt_settings(args).items())),
        relative_to=args.relative_to,
        timing_target=_timing_target(args.timing_target),
        max_runs=args.max_runs,
        max_timing_seconds=args.max_timing_seconds,
        final_rounds=args.final_rounds,
        score_output=args.score_output,
        weight_bits=args.weight_bits,
        kl_exact=args.kl_exact,
        groups=args.groups,
        smooth=smooth_settings(args),
        bias_correction=args.bias_correction,
        weight_rounding=args.weight_rounding,
        range_choice=args.range_choice,
        parallel=parallel_settings(args),
        float_drop=parse_fraction(args.float_drop, "--float-drop") if args.float_drop is not None else None,
    )
    return config  # validated once, by the job, before any work


def _timing_target(text: str) -> float | None:
    """``--timing-target 3%`` (or 0.03) as a fraction; 0 means none (exactly --runs)."""
    cleaned = str(text).strip().rstrip("%")
    try:
        value = float(cleaned) / (100 if str(text).strip().endswith("%") else 1)
    except ValueError:
        expected = "a percentage like 3% (or 0 for exactly --runs)"
        raise TrtmixError(f"Bad --timing-target {text!r}.", expected=expected) from None
    if not 0 <= value < 1:
        raise TrtmixError(f"--timing-target {text} is out of range.", expected="0% to 99%")
    return value or None


def run_compile(args: argparse.Namespace) -> None:
    """``trtmix compile``."""
    report = api.compile(args.source, args.output, _compile_config(args), fresh=args.fresh).report
    for line in summary_lines(report, args.output):
        print(line)
    if report["chosen"] is None:
        raise TrtmixError("No measured plan met the budget; the report shows every probe.", fix="relax --max-drop")


# model → (factory, data recipe, metric, max drop, input names)
DEMOS = {
    "minilm": ("trtmix.models.minilm:minilm", "trtmix.models.minilm:load_data", "cosine", "1%",
               ("input_ids", "attention_mask")),
    "efficientnet-lite0": ("trtmix.models.efficientnet:efficientnet_lite0", "trtmix.models.efficientnet:load_data",
                           "agreement", "0.1%", ("input",)),
}  # fmt: skip


def run_demo(args: argparse.Namespace) -> None:
    """``trtmix demo``: ``compile`` on an embedded model, tensorrt flavour, ``--backend auto``."""
    source, data, metric, max_drop, inputs = DEMOS[args.model]
    config = CompileConfig(
        data=data, budget=Budget.parse(max_drop), metric=metric, frontier=args.frontier, runs=args.runs,
        input_names=inputs, compare=(),
    )  # fmt: skip
    engine = resolve_backend(config.backend, config.flavour)
    budget = config.budget.describe(config.reference)
    print(f"trtmix demo: {args.model}, metric {metric}, budget {budget}, {config.flavour} flavour on {engine}")
    report = api.compile(source, args.output, config, fresh=args.fresh).report
    for line in summary_lines(report, args.output):
        print(line)


def run_trtexec_cmd(args: argparse.Namespace) -> None:
    """``trtmix trtexec-cmd``."""
    from trtmix.runtime.trtexec import trtexec_command

    shapes = {}
    for item in args.shapes:
        parts = item.split(":")
        if len(parts) != 4:
            raise TrtmixError(
                f"Bad --shapes {item!r}.", expected="NAME:MIN:OPT:MAX, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224"
            )
        shapes[parts[0]] = (parts[1], parts[2], parts[3])
    print(
        trtexec_command(args.model, args.engine, args.timing_cache, shapes or None, cuda_graph=not args.no_cuda_graph,
                        major=args.tensorrt_major, workspace_mb=args.workspace_mb,
                        optimization_level=args.builder_optimization_level, tf32=_tf32_allowed(args))
    )  # fmt: skip


def _tf32_allowed(args: argparse.Namespace) -> bool:
    """TF32 stays on only where nothing computes in float32, as trtmix's own builds and trtexec.txt decide it."""
    from pathlib import Path

    from trtmix.runtime.trtexec import fp32_compute

    return not args.no_tf32 and not (Path(args.model).is_file() and fp32_compute(Path(args.model)))
