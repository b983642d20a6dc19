"""EfficientNet-Lite0, all-INT8 in the tensorrt flavour: where top-1 agreement with FP32 is lost, and what wins it back.

    python benchmarks/efficientnet_int8.py [--folder /tmp/trtmix-effnet] [--only breakdown options] [--json out.json]

Issue 33, part 5: the all-INT8 tensorrt-flavour graph agreed with FP32 on ~81% of top-1 (goal 85%).  Every row here
is one graph compiled by ``trtmix.quant.compile.compile_plan`` in the tensorrt flavour (symmetric int8, per-channel
int8 weights, float16 elsewhere) and scored by ONNX Runtime (the job's accuracy oracle) on the search split, 32
batches of 8 crops, top-1 agreement with the FP32 export (and the mean KL beside it).  Nothing is timed: the
figures are deterministic, so a shared machine does not move them.

Breakdown (``--only breakdown``), against the all-INT8 graph with bias correction (what ``compile`` keeps):

* **kinds kept float**: all-INT8 except one kind of unit (stem conv, expand 1×1, depthwise, project 1×1, head 1×1,
  classifier), which stays float16; and the mirror, only that kind INT8;
* **blocks kept float**: all-INT8 except the three convs of one MBConv block;
* **weights or activations alone**: the all-INT8 graph with its activation Q/DQ pairs removed (weights alone
  quantized) or its weight Q/DQ pairs removed (activations alone);
* **asymmetric activations (simulated)**: the activation Q/DQ pairs given a [min, max] uint8-like grid (zero point
  at −128 + min/scale), which TensorRT does not run: what a centred quantizer could win on the ReLU6 outputs
  (one-sided, [0, 6]) and on the rest.

Options (``--only options``): range methods (max, percentile, entropy, mse, and the per-tensor choice of
``trtmix.quant.range_choice.choose_ranges``), mse weight ranges (all, depthwise only), bias correction on and off,
smoothing α / centring (``plan_smoothing``, which only touches the classifier here), the one-sided (ReLU6) conv
inputs centred (``trtmix.quant.smooth.plan_conv_centring``: pointwise convs only, or every conv, a padded one with
its border map since bd62dfd, an explicit Pad of the shifted zero before it: scores cached in ``scores.json`` under
the "Pad of −z" labels may be of that form, equal up to float16 rounding), each with the range methods that scored
best, checked on the holdout split too (no choice here saw it), and the calibration batch count.

The folder keeps the export, the histograms and every score (``scores.json``), so a second run prints at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import MODELS  # noqa: E402

from trtmix.calibration.calibrate import CalibrationConfig, calibrate_cached, weight_ranges  # noqa: E402
from trtmix.calibration.ranges import Ranges  # noqa: E402
from trtmix.data.recipes import load_batches  # noqa: E402
from trtmix.evaluate import mean_kl, top1_agreement  # noqa: E402
from trtmix.export import export_once  # noqa: E402
from trtmix.ir.fold import load_float_model  # noqa: E402
from trtmix.ir.units import Unit, require_units  # noqa: E402
from trtmix.quant.compile import compile_plan  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.quant.smooth import SmoothSettings, plan_conv_centring, plan_smoothing  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner  # noqa: E402

NAME = "efficientnet-lite0"
KINDS = ("stem", "expand", "depthwise", "project", "head", "classifier")
Edit = Callable[[onnx.ModelProto, Ranges], None]


def kind_of(unit: Unit) -> str:
    """Which of ``KINDS`` a unit of EfficientNet-Lite0's export is (by its torch module name)."""
    for marker, kind in (("_conv_stem", "stem"), ("_expand_conv", "expand"), ("_depthwise_conv", "depthwise"),
                         ("_project_conv", "project"), ("_conv_head", "head"), ("_fc", "classifier")):  # fmt: skip
        if marker in unit.name:
            return kind
    return "other"


def block_of(unit: Unit) -> str:
    """``block N`` for MBConv units, else the unit's kind."""
    parts = unit.name.split("_blocks.")
    return f"block {parts[1].split('.')[0]}" if len(parts) > 1 else kind_of(unit)


class Bench:
    """The export, its units, the calibration, the FP32 reference and a score cache, all kept in ``folder``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.spec = folder, MODELS[NAME]
        self.path = export_once(self.spec.source, folder / f"{NAME}.onnx", input_names=list(self.spec.inputs))
        self.model = load_float_model(self.path)
        self.units = require_units(self.model, str(self.path))
        self.feeds = {split: list(load_batches(self.spec.data, split))[: self.spec.eval_batches]
                      for split in ("search", "holdout")}  # fmt: skip
        with OnnxRuntimeRunner(self.model, threads=2) as runner:
            self.references = {split: np.concatenate([runner.infer(feed)[0] for feed in feeds])
                               for split, feeds in self.feeds.items()}  # fmt: skip
        self.reference = self.references["search"]
        self.scores_path = folder / "scores.json"
        self.scores: dict[str, dict[str, float]] = (
            json.loads(self.scores_path.read_text()) if self.scores_path.is_file() else {}
        )
        self.base = self.ranges(CalibrationConfig())

    def ranges(self, config: CalibrationConfig) -> Ranges:
        """Ranges of ``config`` through the calibration cache in the folder (histograms once per batch count)."""
        load = lambda: load_batches(self.spec.data, "calibration")  # noqa: E731
        return calibrate_cached(self.model, self.units, self.spec.data, load, "calibration", config,
                                self.folder / "calibration", progress=False)  # fmt: skip

    def names(self, keep: Callable[[Unit], bool]) -> list[str]:
        return [unit.name for unit in self.units if keep(unit)]

    def score(
        self, key: str, ranges: Ranges, int8: list[str] | None = None, edit: Edit | None = None, split: str = "search"
    ) -> dict:
        """Top-1 agreement and KL to FP32 of the graph with ``int8`` units INT8 (default all) under ``ranges``."""
        key = key if split == "search" else f"{split}: {key}"
        if key not in self.scores:
            start = time.perf_counter()
            plan = PrecisionPlan.with_int8(int8 if int8 is not None else [u.name for u in self.units])
            compiled = compile_plan(self.model, plan, ranges, "tensorrt")
            if edit is not None:
                edit(compiled, ranges)
            with OnnxRuntimeRunner(compiled, threads=2, optimize=True) as runner:
                outputs = np.concatenate([runner.infer(feed)[0] for feed in self.feeds[split]])
            reference = self.references[split]
            self.scores[key] = {"agreement": top1_agreement(outputs, reference), "kl": mean_kl(outputs, reference),
                                "seconds": time.perf_counter() - start}  # fmt: skip
            stored = json.loads(self.scores_path.read_text()) if self.scores_path.is_file() else {}
            self.scores_path.write_text(json.dumps({**stored, **self.scores}, indent=1))  # another run may add too
        print(f"  {key}: {self.scores[key]['agreement']:.4f}", file=sys.stderr, flush=True)
        return self.scores[key]


def _activation_pairs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """tensor → the QuantizeLinear of each activation Q/DQ pair (its input is not a constant)."""
    constants = {init.name for init in model.graph.initializer}
    return {node.input[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear"
            and node.input[0] not in constants and "/weight/" not in node.name}  # fmt: skip


def drop_pairs(weights: bool) -> Edit:
    """Remove the weight (``weights``) or activation Q/DQ pairs: readers of each DQ read the Q's input again."""

    def edit(model: onnx.ModelProto, _: Ranges) -> None:
        quantizers = [n for n in model.graph.node
                      if n.op_type == "QuantizeLinear" and ("/weight/" in n.name) == weights]  # fmt: skip
        source = {q.output[0]: q.input[0] for q in quantizers}
        dequantizers = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in source]
        rewire = {dq.output[0]: source[dq.input[0]] for dq in dequantizers}
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in rewire:
                    node.input[i] = rewire[name]
        for node in [*quantizers, *dequantizers]:
            model.graph.node.remove(node)
        used = {name for node in model.graph.node for name in node.input}
        for init in [init for init in model.graph.initializer if init.name not in used]:
            model.graph.initializer.remove(init)

    return edit


def asymmetric(select: Callable[[str, Any], bool]) -> Edit:
    """Give the selected activation Q/DQ pairs a [min, max] grid of 256 levels (simulated; TensorRT has none)."""

    def edit(model: onnx.ModelProto, ranges: Ranges) -> None:
        inits = {init.name: init for init in model.graph.initializer}
        for tensor, node in _activation_pairs(model).items():
            original = tensor.removesuffix("_fp16")
            found = ranges.tensors.get(original)
            if found is None or not select(original, found):
                continue
            low, high = min(found.min, 0.0), max(found.max, 0.0)
            scale_init, zero_init = inits[node.input[1]], inits[node.input[2]]
            scale = onnx.numpy_helper.to_array(scale_init)
            step = (high - low) / 255.0
            zero = np.clip(np.rint(-128 - low / step), -128, 127)
            scale_init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(step, dtype=scale.dtype), scale_init.name))
            zero_init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(zero, dtype=np.int8), zero_init.name))

    return edit


def breakdown(bench: Bench) -> list[tuple[str, str, dict]]:
    """(section, row, score) of the sensitivity breakdown."""
    ranges = replace(bench.base, bias_correction=True)
    rows = [("reference", "all-INT8, max ranges, bias correction", bench.score("all-int8 bc", ranges)),
            ("reference", "all-INT8, max ranges, no bias correction", bench.score("all-int8", bench.base))]  # fmt: skip
    for kind in KINDS:
        rows.append(("kind kept float16 (rest INT8)", kind,
                     bench.score(f"float {kind}", ranges, bench.names(lambda u, k=kind: kind_of(u) != k))))  # fmt: skip
    rows.append(("one quantizer kind alone", "weights INT8 alone (activation Q/DQ removed)",
                 bench.score("weights only", ranges, edit=drop_pairs(False))))  # fmt: skip
    rows.append(("one quantizer kind alone", "activations INT8 alone (weight Q/DQ removed)",
                 bench.score("activations only", ranges, edit=drop_pairs(True))))  # fmt: skip
    one_sided = lambda _, r: r.min >= 0  # noqa: E731
    for label, select in (("every activation", lambda _, r: True), ("one-sided ones (ReLU6 outputs, [0, max])",
                          one_sided), ("two-sided ones (projections, residual sums)",
                          lambda t, r: not one_sided(t, r))):  # fmt: skip
        rows.append(("asymmetric activations, simulated", label,
                     bench.score(f"asymmetric {label}", ranges, edit=asymmetric(select))))  # fmt: skip
    for kind in ("depthwise", "project", "classifier"):
        inputs = {unit.inputs[0] for unit in bench.units if kind_of(unit) == kind}
        edit = asymmetric(lambda t, _, i=inputs: t in i)
        rows.append(("asymmetric activations, simulated", f"the {kind} units' inputs only",
                     bench.score(f"asymmetric {kind} inputs", ranges, edit=edit)))  # fmt: skip
    for kind in KINDS:
        rows.append(("only this kind INT8", kind,
                     bench.score(f"only {kind}", ranges, bench.names(lambda u, k=kind: kind_of(u) == k))))  # fmt: skip
    blocks = list(dict.fromkeys(block_of(u) for u in bench.units if block_of(u).startswith("block")))
    for block in blocks:
        int8 = bench.names(lambda u, b=block: block_of(u) != b)
        rows.append(("block kept float16 (rest INT8)", block, bench.score(f"float {block}", ranges, int8)))
    return rows


def options(bench: Bench) -> list[tuple[str, str, dict]]:
    """(section, row, score) of each quantizer option, the all-INT8 graph otherwise as ``compile`` writes it."""
    from trtmix.quant.range_choice import choose_ranges

    rows = []
    candidates = {}
    for method in ("max", "percentile", "entropy", "mse"):
        candidates[method] = bench.ranges(CalibrationConfig(method=method))
        for bias in (True, False):
            label = f"{method}{', bias correction' if bias else ''}"
            chosen = replace(candidates[method], bias_correction=bias)
            rows.append(("activation ranges", label, bench.score(f"ranges {label}", chosen)))
    key, centred_key = "ranges per-tensor, bias correction", "per-tensor choice, centred, bc"
    if not all(k in bench.scores for k in (key, centred_key, f"holdout: {centred_key}")):
        calibration = list(load_batches(bench.spec.data, "calibration"))[: CalibrationConfig().batches]
        chosen, record = choose_ranges(bench.model, bench.units, candidates, calibration, symmetric=True)
        print(f"  per-tensor choice: {record.to_dict()['counts']}", file=sys.stderr, flush=True)
        bench.score(key, replace(chosen, bias_correction=True))
        centred = replace(plan_conv_centring(bench.model, bench.units, chosen)[0], bias_correction=True)
        for split in ("search", "holdout"):
            bench.score(centred_key, centred, split=split)
    rows.append(("activation ranges", "per-tensor choice, bias correction", bench.scores[key]))
    rows.append(("one-sided conv inputs centred", "every conv (Pad of −z where it pads), per-tensor choice, "
                 "bias correction", bench.scores[centred_key]))  # fmt: skip
    rows.append(("holdout split (256 crops no choice saw), bias correction", "per-tensor choice, centred",
                 bench.scores[f"holdout: {centred_key}"]))  # fmt: skip
    mse_weights = weight_ranges(bench.model, bench.units, "mse")
    depthwise = {u.weight for u in bench.units if kind_of(u) == "depthwise"}
    only_depthwise = {k: v for k, v in mse_weights.items() if k in depthwise}
    for label, weights in (("mse, every unit", mse_weights), ("mse, depthwise only", only_depthwise)):
        chosen = replace(bench.base, weights=weights, bias_correction=True)
        rows.append(("weight ranges (bias correction)", label, bench.score(f"weights {label}", chosen)))
    for alpha, centre in ((0.5, False), (0.8, False), (0.8, True)):
        smoothed, _ = plan_smoothing(bench.model, bench.units, bench.base, SmoothSettings(alpha=alpha), True, centre)
        label = f"α={alpha}{', centred' if centre else ''}"
        rows.append(("smoothing (bias correction)", label,
                     bench.score(f"smooth {label}", replace(smoothed, bias_correction=True))))  # fmt: skip
    for label, base in (("max", bench.base), ("percentile", candidates["percentile"]), ("mse", candidates["mse"])):
        for padded in (False, True) if label == "max" else (True,):
            centred, _ = plan_conv_centring(bench.model, bench.units, base, padded=padded)
            what = f"{'every conv (Pad of −z where it pads)' if padded else 'pointwise convs only'}, {label} ranges"
            for bias in (True, False) if label == "max" and padded else (True,):
                row = f"{what}{', bias correction' if bias else ''}"
                rows.append(("one-sided conv inputs centred", row,
                             bench.score(f"centred {row}", replace(centred, bias_correction=bias))))  # fmt: skip
    for label, base, centre in (("max", bench.base, False), ("percentile", candidates["percentile"], False),
                                ("mse", candidates["mse"], False), ("max, centred", bench.base, True),
                                ("percentile, centred", candidates["percentile"], True),
                                ("mse, centred", candidates["mse"], True)):  # fmt: skip
        ranges = plan_conv_centring(bench.model, bench.units, base)[0] if centre else base
        rows.append(("holdout split (256 crops no choice saw), bias correction", label,
                     bench.score(label, replace(ranges, bias_correction=True), split="holdout")))  # fmt: skip
    for batches in (2, 4, 16, 32):
        ranges = bench.ranges(CalibrationConfig(batches=batches))
        rows.append(("calibration batches of 8 (max, bias correction)", str(batches),
                     bench.score(f"batches {batches}", replace(ranges, bias_correction=True))))  # fmt: skip
    return rows


def mixed(bench: Bench) -> list[tuple[str, str, dict]]:
    """Plans of one or a few kinds INT8, centred percentile ranges, scored against the all-FP16 plan's top-1.

    The demo's budget is 0.1% of the all-high plan's agreement: on 256 crops, not one crop may flip.  The
    agreement here is to the all-FP16 graph's own outputs (1.0000 = no flip against it).
    """
    percentile = bench.ranges(CalibrationConfig(method="percentile"))
    centred = replace(plan_conv_centring(bench.model, bench.units, percentile)[0], bias_correction=True)
    plan = PrecisionPlan.with_int8([])
    with OnnxRuntimeRunner(compile_plan(bench.model, plan, centred, "tensorrt"), threads=2, optimize=True) as runner:
        fp16 = np.concatenate([runner.infer(feed)[0] for feed in bench.feeds["search"]])
    rows = []
    saved = bench.references["search"]
    bench.references["search"] = fp16
    try:
        for kinds in (("head",), ("classifier",), ("head", "classifier"), ("stem",), ("project",), ("expand",)):
            int8 = bench.names(lambda u, k=kinds: kind_of(u) in k)
            label = " + ".join(kinds)
            rows.append(("against all-FP16 (centred percentile ranges, bias correction)", f"{label} INT8 ({len(int8)})",
                         bench.score(f"vs fp16: only {label}", centred, int8)))  # fmt: skip
    finally:
        bench.references["search"] = saved
    return rows


def border_map(bench: Bench, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (compiled with padded centring) with each Pad of −z removed and a constant border map added instead.

    The Conv pads X − z with 0 again, which is X padded with z: at output pixel p it misses −z·Σ W_t over the taps t
    that read padding.  That map, per channel and pixel (static spatial shapes), is added after the Conv, whose bias
    already holds z·ΣW.  The weight is the graph's DQ(Q(W)).  The simulation that led ``compile`` to write the map
    itself (``trtmix.quant.smooth.border_map``) where sizes are static; kept as a cross-check of that form.
    """
    from trtmix.ir.large import shape_view

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = shape_view(bench.model).graph.value_info
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred}
    inits = {i.name: i for i in model.graph.initializer}
    value = lambda name: onnx.numpy_helper.to_array(inits[name])  # noqa: E731
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in model.graph.node for out in node.output}
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        quantizer = consumers[pad.output[0]][0]
        conv = consumers[consumers[quantizer.output[0]][0].output[0]][0]
        z, pads = -float(value(pad.input[2])), [int(v) for v in value(pad.input[1])]  # [0, 0, t, l, 0, 0, b, r]
        quantizer.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        for attribute in conv.attribute:
            if attribute.name == "pads":
                attribute.ints[:] = [pads[2], pads[3], pads[6], pads[7]]
        weight_q = producer[producer[conv.input[1]].input[0]]
        scale = value(weight_q.input[1]).astype(np.float64).reshape(-1, 1, 1, 1)
        weight = np.clip(np.rint(value(weight_q.input[0]).astype(np.float64) / scale), -127, 127) * scale
        height, width = shapes[pad.input[0].removesuffix("/centred")][2:]
        strides = next((list(a.ints) for a in conv.attribute if a.name == "strides"), [1, 1])
        kh, kw = weight.shape[2:]
        rows = np.arange((height + pads[2] + pads[6] - kh) // strides[0] + 1) * strides[0] - pads[2]
        cols = np.arange((width + pads[3] + pads[7] - kw) // strides[1] + 1) * strides[1] - pads[3]
        border = np.zeros((weight.shape[0], len(rows), len(cols)))
        for a in range(kh):
            for b in range(kw):
                outside = ((rows + a < 0) | (rows + a >= height))[:, None] | ((cols + b < 0) | (cols + b >= width))
                border -= z * weight[:, 0, a, b][:, None, None] * outside[None]
        output = conv.output[0]
        for reader in consumers[output]:
            reader.input[:] = [f"{output}/corrected" if name == output else name for name in reader.input]
        dtype = value(conv.input[2]).dtype
        model.graph.initializer.append(onnx.numpy_helper.from_array(border[None].astype(dtype), f"{output}/border"))
        position = list(model.graph.node).index(conv) + 1
        add = onnx.helper.make_node("Add", [output, f"{output}/border"], [f"{output}/corrected"], name=f"{output}/+map")
        model.graph.node.insert(position, add)
    return model


def padded_fallback(bench: Bench, plan: PrecisionPlan, ranges: Ranges) -> onnx.ModelProto:
    """The all-INT8 graph with every padded centred conv in the Pad-of-−z form ``compile`` keeps for dynamic sizes.

    ``compile`` writes the border map wherever the spatial sizes are static (EfficientNet-Lite0's are); the sizes
    are hidden from ``divided_input`` here so that the Pad form can still be timed against it.
    """
    from unittest.mock import patch

    with patch("trtmix.quant.smooth.static_spatial", return_value=None):
        return compile_plan(bench.model, plan, ranges, "tensorrt")


def latency(bench: Bench, rounds: int = 15) -> list[tuple[str, str, dict]]:
    """The padded-centring forms: agreement, and OpenVINO latency ÷ the plain all-INT8 graph, paired per round.

    The forms: the Pad of −z (``compile``'s fallback for dynamic sizes, forced by ``padded_fallback``), the border
    map as ``compile`` writes it, and ``border_map``'s simulation of it on the Pad graph.  Their agreements differ by
    a few crops: an all-INT8 graph's logits move ~2.5% between any two of them (their maps differ by 1 float16 ulp),
    with the activation Q/DQ removed the map and the Pad graphs differ by 9e-4.

    Rough: 2 shared cores.  Each round times every graph (10 runs, median); the ratio is per round, then its median.
    """
    from trtmix.runtime import get_backend

    plan = PrecisionPlan.with_int8([u.name for u in bench.units])
    percentile = bench.ranges(CalibrationConfig(method="percentile"))
    centred = replace(plan_conv_centring(bench.model, bench.units, percentile)[0], bias_correction=True)
    pointwise = replace(plan_conv_centring(bench.model, bench.units, percentile, padded=False)[0], bias_correction=True)
    padded = padded_fallback(bench, plan, centred)
    graphs = {"plain (max, bias correction)": compile_plan(bench.model, plan, replace(bench.base, bias_correction=True),
                                                          "tensorrt"),
              "centred pointwise convs only (percentile)": compile_plan(bench.model, plan, pointwise, "tensorrt"),
              "centred, explicit Pad of −z (forced fallback, percentile)": padded,
              "centred, border map as compile writes it (percentile)": compile_plan(bench.model, plan, centred,
                                                                                    "tensorrt"),
              "centred, border map simulated on the Pad graph (percentile)": border_map(bench, padded)}  # fmt: skip
    engine, runners, rows = get_backend("openvino", flavour="tensorrt"), {}, []
    for index, (label, graph) in enumerate(graphs.items()):
        path = bench.folder / f"latency-{index}.onnx"
        onnx.save(graph, path)
        runners[label] = engine.open(engine.build(path, path.with_suffix(".openvino.onnx")))
    feed = bench.feeds["search"][0]
    times: dict[str, list[float]] = {label: [] for label in runners}
    try:
        for _ in range(rounds):
            for label, runner in runners.items():
                times[label].append(runner.time(feed, 10, 2).median_ms)
    finally:
        for runner in runners.values():
            runner.close()
    plain = np.asarray(times["plain (max, bias correction)"])
    for label, graph in graphs.items():
        with OnnxRuntimeRunner(graph, threads=2, optimize=True) as runner:
            outputs = np.concatenate([runner.infer(feed)[0] for feed in bench.feeds["search"]])
        ratio = float(np.median(np.asarray(times[label]) / plain))
        rows.append(("OpenVINO latency, paired rounds (rough)", f"{label}: {np.median(times[label]):.1f} ms, "
                     f"{ratio:.2f}× plain", {"agreement": top1_agreement(outputs, bench.reference),
                                             "kl": mean_kl(outputs, bench.reference), "seconds": 0.0}))  # fmt: skip
    return rows


def markdown(rows: list[tuple[str, str, dict]]) -> str:
    lines = ["| section | row | top-1 agreement | KL | s |", "|---|---|---|---|---|"]
    for section, label, score in rows:
        lines.append(f"| {section} | {label} | {score['agreement']:.4f} | {score['kl']:.4f} | {score['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/trtmix-effnet"))
    parser.add_argument("--only", nargs="+", choices=("breakdown", "options", "mixed", "latency"),
                        default=["breakdown", "options", "mixed"])  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(cpu_features().describe())
    bench = Bench(args.folder)
    rows = []
    for part, run in (("breakdown", breakdown), ("options", options), ("mixed", mixed), ("latency", latency)):
        if part in args.only:
            rows += run(bench)
    print(f"{NAME}, all-INT8 tensorrt flavour, ONNX Runtime, top-1 agreement with FP32 on "
          f"{len(bench.reference)} search crops\n")  # fmt: skip
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([{"section": s, "row": r, **v} for s, r, v in rows], indent=1))


if __name__ == "__main__":
    main()
