"""The tensorrt flavour's Q/DQ placements on a seeded BERT-like block built with onnx.helper.

``placement="modelopt"`` must put Q/DQ where NVIDIA ModelOpt's ONNX INT8 mode does (both inputs of residual Adds
behind MatMul units; not the attention-mask Add, LayerNorm, GELU or Softmax), the default on neither input of an Add
behind MatMul units (the residual stream stays float: its outlier channels cost int8 most of its accuracy); the
compiled graphs must run in ONNX Runtime and OpenVINO, with OpenVINO running every planned unit int8.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate, calibrate_max, tensors_to_calibrate
from trtmix.evaluate import cosine
from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import find_units
from trtmix.job.engine_check import check_layers
from trtmix.quant.builder import Builder
from trtmix.quant.compile import compile_plan
from trtmix.quant.flavours import TensorRTFlavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.smooth import SmoothSettings, plan_smoothing
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.runtime.openvino import OpenVinoBackend

WIDTH, SEQ, HIDDEN = 16, 8, 32
RESIDUAL_ADDS = ("attn_residual", "ffn_residual")


def _bert_block(seed: int = 0, scale_first: bool = False, outlier: float = 1.0) -> onnx.ModelProto:
    """LayerNorm → Q/K/V → scaled, masked softmax attention → dense + residual → LayerNorm → GELU FFN + residual → LN.

    The shape of one BERT encoder layer as torch exports it (bias Adds after MatMuls, erf GELU, a const Mul on the
    scores before the mask Add); ``scale_first`` scales Q before Q·Kᵀ instead, as scaled-dot-product exports do, so
    the attention MatMul's output is the mask Add's input.  ``outlier``: the LayerNorms' γ on channel 0, BERT's
    outlier channel in the residual stream when large.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def linear(name: str, x: str, n_in: int, n_out: int) -> list[onnx.NodeProto]:
        w = const(f"{name}.w", rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))
        b = const(f"{name}.b", rng.standard_normal(n_out) * 0.1)
        return [helper.make_node("MatMul", [x, w], [f"{name}_mm"], name=f"{name}/MatMul"),
                helper.make_node("Add", [f"{name}_mm", b], [name], name=f"{name}/Add")]  # fmt: skip

    def layer_norm(name: str, x: str) -> onnx.NodeProto:
        gamma = 1 + 0.1 * rng.standard_normal(WIDTH)
        gamma[0] = outlier
        scale, bias = const(f"{name}.g", gamma), const(f"{name}.b", np.zeros(WIDTH))
        return helper.make_node("LayerNormalization", [x, scale, bias], [name], name=name, axis=-1)

    nodes = [layer_norm("ln0", "x")]
    for head in ("q", "k", "v"):
        nodes += linear(head, "ln0", WIDTH, WIDTH)
    scale = const("scale", 1 / np.sqrt(WIDTH))
    nodes += [helper.make_node("Transpose", ["k"], ["k_t"], name="k_t", perm=[0, 2, 1])]
    if scale_first:
        nodes += [helper.make_node("Mul", ["q", scale], ["q_scaled"], name="scale/Mul"),
                  helper.make_node("MatMul", ["q_scaled", "k_t"], ["scaled"], name="qk/MatMul")]  # fmt: skip
    else:
        nodes += [helper.make_node("MatMul", ["q", "k_t"], ["scores"], name="qk/MatMul"),
                  helper.make_node("Mul", ["scores", scale], ["scaled"], name="scale/Mul")]  # fmt: skip
    nodes += [
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask/Add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="av/MatMul"),
    ]
    nodes += linear("dense", "context", WIDTH, WIDTH)
    nodes += [helper.make_node("Add", ["dense", "ln0"], ["res1"], name="attn_residual"), layer_norm("ln1", "res1")]
    nodes += linear("up", "ln1", WIDTH, HIDDEN)
    nodes += [
        helper.make_node("Div", ["up", const("sqrt2", np.sqrt(2.0))], ["g_div"], name="gelu/Div"),
        helper.make_node("Erf", ["g_div"], ["g_erf"], name="gelu/Erf"),
        helper.make_node("Add", ["g_erf", const("one", 1.0)], ["g_add"], name="gelu/Add"),
        helper.make_node("Mul", ["up", "g_add"], ["g_mul"], name="gelu/Mul"),
        helper.make_node("Mul", ["g_mul", const("half", 0.5)], ["gelu"], name="gelu/Mul_1"),
    ]
    nodes += linear("down", "gelu", HIDDEN, WIDTH)
    nodes += [helper.make_node("Add", ["down", "ln1"], ["res2"], name="ffn_residual"), layer_norm("ln2", "res2")]
    graph = helper.make_graph(
        nodes, "bert_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, WIDTH]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, SEQ])],
        [helper.make_tensor_value_info("ln2", TensorProto.FLOAT, ["batch", SEQ, WIDTH])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random activations and an additive mask hiding the last positions of the second row."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 1, SEQ), dtype=np.float32)
    mask[1, 0, SEQ - 3 :] = -10000.0
    return [{"x": rng.standard_normal((2, SEQ, WIDTH)).astype(np.float32), "mask": mask} for _ in range(count)]


@pytest.fixture(scope="module")
def block():
    """The block, its units and max ranges from four seeded batches."""
    model = _bert_block()
    units = find_units(model)
    ranges = calibrate_max(model, _feeds(4, seed=1), tensors_to_calibrate(model, units), progress=False)
    return model, units, ranges


def _quantized_edges(compiled: onnx.ModelProto) -> set[tuple[str, str]]:
    """(float tensor, reading node) pairs that read it through an activation Q→DQ in ``compiled``."""
    index = GraphIndex(compiled)
    edges = set()
    for node in compiled.graph.node:
        for tensor in node.input:
            dq = index.producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear" or node.op_type == "QuantizeLinear":
                continue
            q = index.producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and not index.is_constant(q.input[0]):
                edges.add((_float_name(index, q.input[0]), node.name))
    return edges


def _float_name(index: GraphIndex, tensor: str) -> str:
    """The tensor's name before the float16 rewrite put a Cast in front of it."""
    producer = index.producer.get(tensor)
    return producer.input[0] if producer is not None and producer.op_type == "Cast" else tensor


def _residual_edges(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(tensor, reader) for tensor, reader in edges if reader in RESIDUAL_ADDS}


def test_modelopt_placement_quantizes_both_residual_inputs_and_nothing_else_extra(block):
    model, units, ranges = block
    plan = PrecisionPlan.with_int8(u.name for u in units)
    ours = _quantized_edges(compile_plan(model, plan, ranges, TensorRTFlavour("trtmix")))
    modelopt = _quantized_edges(compile_plan(model, plan, ranges, TensorRTFlavour("modelopt")))
    assert not _residual_edges(ours), "behind MatMul units the residual stream stays float"
    assert _residual_edges(modelopt) == {("ln0", "attn_residual"), ("dense", "attn_residual"),
                                         ("ln1", "ffn_residual"), ("down", "ffn_residual")}  # fmt: skip
    assert modelopt - ours == _residual_edges(modelopt)
    assert ours <= modelopt
    untouched = {"mask/Add", "softmax", "ln0", "ln1", "ln2", "gelu/Div", "gelu/Mul", "gelu/Mul_1"}
    assert not {reader for _, reader in modelopt} & untouched


def test_a_float_residual_stream_keeps_an_outlier_channel_that_int8_loses():
    """γ = 40 on one channel, as BERT's residual stream has: one int8 step of the skip input then spans the other
    channels' whole range.  The default leaves the skip input float; quantizing it (ModelOpt's placement, and the
    default until 2026-12-03) costs the other channels several times the all-INT8 error."""
    model = _bert_block(outlier=40.0)
    units = find_units(model)
    calibrated = calibrate(model, units, _feeds(4, seed=1), CalibrationConfig(), progress=False)
    ranges, _ = plan_smoothing(model, units, calibrated, SmoothSettings(alpha=0.8), float16=True)  # as compile does
    plan = PrecisionPlan.with_int8(u.name for u in units)
    feed = _feeds(1, seed=9)[0]
    reference = OnnxRuntimeRunner(model, threads=1).infer(feed)[0].astype(np.float64)  # type: ignore[arg-type]
    errors = {}
    for placement in ("trtmix", "modelopt"):
        compiled = compile_plan(model, plan, ranges, TensorRTFlavour(placement))
        out = OnnxRuntimeRunner(compiled, threads=1).infer(feed)[0].astype(np.float64)  # type: ignore[arg-type]
        rest = (out - reference)[..., 1:], reference[..., 1:]  # channel 0's size would hide the others' error
        errors[placement] = np.linalg.norm(rest[0]) / np.linalg.norm(rest[1])
    assert errors["trtmix"] * 2 < errors["modelopt"], errors


def test_modelopt_placement_follows_the_plan(block):
    """A residual Add behind an FP16 unit gets no Q/DQ on that unit's output; the skip input only if already int8."""
    model, units, ranges = block
    high = {"dense/MatMul", "down/MatMul"}
    plan = PrecisionPlan.with_int8(u.name for u in units if u.name not in high)
    modelopt = _quantized_edges(compile_plan(model, plan, ranges, TensorRTFlavour("modelopt")))
    assert not _residual_edges(modelopt)
    up_high = PrecisionPlan.with_int8(u.name for u in units if u.name != "up/MatMul")
    edges = _residual_edges(_quantized_edges(compile_plan(model, up_high, ranges, TensorRTFlavour("modelopt"))))
    assert edges == {("ln0", "attn_residual"), ("dense", "attn_residual"), ("down", "ffn_residual")}


def test_modelopt_placement_leaves_the_attention_mask_add_float_when_it_follows_the_attention_matmul():
    model = _bert_block(scale_first=True)
    units = find_units(model)
    assert any(u.output == "scaled" for u in units)  # the mask Add reads an INT8 unit's output directly
    ranges = calibrate_max(model, _feeds(2, seed=1), tensors_to_calibrate(model, units), progress=False)
    plan = PrecisionPlan.with_int8(u.name for u in units)
    modelopt = _quantized_edges(compile_plan(model, plan, ranges, TensorRTFlavour("modelopt")))
    assert _residual_edges(modelopt) == {("ln0", "attn_residual"), ("dense", "attn_residual"),
                                         ("ln1", "ffn_residual"), ("down", "ffn_residual")}  # fmt: skip
    assert not {reader for _, reader in modelopt} & {"mask/Add", "softmax"}


def test_placement_is_part_of_the_flavours_key_only_when_not_default():
    assert "placement" not in TensorRTFlavour().options()
    assert TensorRTFlavour("modelopt").options() != TensorRTFlavour().options()
    assert TensorRTFlavour("modelopt").metadata()["trtmix.placement"] == "modelopt"
    with pytest.raises(Exception, match="placement"):
        TensorRTFlavour("everywhere")


def test_a_change_of_the_residual_rule_changes_every_artifact_key(block, monkeypatch):
    """A job folder written under an older default rule builds again instead of reusing its graphs."""
    from trtmix.quant import flavours

    model, units, ranges = block
    plan = PrecisionPlan.with_int8(u.name for u in units)
    backend = OpenVinoBackend(threads=1)
    current = Builder(model, units, ranges, TensorRTFlavour(), backend).key(plan)
    monkeypatch.setattr(flavours, "RESIDUAL_RULE", flavours.RESIDUAL_RULE - 1)
    assert Builder(model, units, ranges, TensorRTFlavour(), backend).key(plan) != current


@pytest.mark.parametrize("placement", ["trtmix", "modelopt"])
def test_both_placements_run_in_onnxruntime_and_openvino_with_units_int8(block, tmp_path, placement):
    model, units, ranges = block
    plan = PrecisionPlan.with_int8(u.name for u in units)
    backend = OpenVinoBackend(threads=1, cache_dir=tmp_path / "cache")
    built = Builder(model, units, ranges, TensorRTFlavour(placement), backend, tmp_path).build(plan)
    feed = _feeds(1, seed=9)[0]
    reference = OnnxRuntimeRunner(_saved(model, tmp_path), threads=1).infer(feed)[0]
    onnxruntime = OnnxRuntimeRunner(built.onnx_path, threads=1).infer(feed)[0]
    with backend.open(built.artifact) as runner:
        openvino = runner.infer(feed)[0]
    rows = len(reference)
    assert cosine(onnxruntime.reshape(rows, -1), reference.reshape(rows, -1)).min() >= 0.98
    assert cosine(openvino.reshape(rows, -1), onnxruntime.reshape(rows, -1)).min() >= 0.999
    consumers = {t: [n.name for n in nodes] for t, nodes in GraphIndex(model).consumers.items()}
    checks = check_layers(backend.engine_layers(built.artifact, feed), units, plan, False, consumers)
    assert checks and all(check.engine == "int8" for check in checks if check.planned == "int8"), checks


def _saved(model: onnx.ModelProto, folder) -> str:
    path = folder / "float.onnx"
    onnx.save(model, path)
    return str(path)
