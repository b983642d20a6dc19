"""Every graph trtmix writes is valid ONNX before an engine sees it.

OpenVINO reads graphs that ONNX Runtime refuses: a float16 constant feeding ``Range`` built and ran there, so a job
would have shipped a graph TensorRT's parser and ONNX Runtime reject.  Once per job, the all-high and the all-INT8
plans of the job's flavour are compiled and put through ``onnx.checker`` with shape inference (``full_check``) and an
ONNX Runtime load; every other plan sits between those two.  A failure is one error naming the node and its op.
"""

from __future__ import annotations

import re

import onnx

from trtmix.errors import CompileError, TrtmixError
from trtmix.ir.large import check_model
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan
from trtmix.search.journal import Journal

NODE_NAME = re.compile(r"node \(([^)]+)\)|[Nn]ode '([^']+)'|node name: ([^\s,)]+)")


def check_job_graphs(builder: Builder, high: PrecisionPlan, journal: Journal) -> None:
    """Check the all-high plan ``high`` and its all-INT8 form in ``builder``'s flavour (once per job, journaled)."""
    all_int8 = high.with_units(unit.name for unit in builder.units)
    key = f"valid-graphs:{high.stable_hash()}:{all_int8.stable_hash()}"
    if journal.cached(key):
        return
    for label, plan in (("all-high", high), ("all-INT8", all_int8)):
        check_graph(builder.compile(plan), f"the {builder.flavour.name} flavour's {label} graph")
    journal.store(key, True)


def check_graph(model: onnx.ModelProto, label: str) -> None:
    """``onnx.checker`` with shape inference, then an ONNX Runtime load; one clear error naming the node."""
    from trtmix.runtime.onnxruntime import ort_session

    try:
        check_model(model, full_check=True)
        ort_session(model, optimize=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, TrtmixError) as err:
        message = str(err).strip().splitlines()[0][:400]
        raise CompileError(
            f"trtmix wrote an invalid graph: {label} fails ONNX's checks{_where(model, message)}: {message}",
            expected="a graph ONNX Runtime and TensorRT's parser accept",
            fix="use --flavour ort-cpu, or keep the named node in FP32 with a plan's \"fp32_nodes\"; please report "
            "it with the model",
        ) from err


def _where(model: onnx.ModelProto, message: str) -> str:
    """`` at node NAME (OP)`` when the message names a node of ``model``."""
    ops = {node.name: node.op_type for node in model.graph.node}
    for match in NODE_NAME.finditer(message):
        name = next(group for group in match.groups() if group)
        if name in ops:
            return f" at node {name} ({ops[name]})"
    return ""
