"""What precision a built engine really runs each layer in: one record, ``EngineLayer``, for every engine.

Each engine turns its own report into ``EngineLayer`` records (name, type, the ONNX nodes fused into it, precision):
TensorRT from its inspector JSON (below), OpenVINO from its runtime model (``trtmix.runtime.openvino``).  Comparing
them with a precision plan is the job's business (``trtmix.job.engine_check``): engines know nothing of plans.

TensorRT input: the engine inspector's JSON
(``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` on an engine built with
``ProfilingVerbosity.DETAILED``).  Its documented layout (TensorRT developer guide, "Engine Inspector"):
``{"Layers": [{"Name": ..., "LayerType": ..., "Inputs": [{"Name", "Dimensions", "Format/Datatype"}],
"Outputs": [...], ...}], "Bindings": [...]}``.  A fused layer's ``Name`` joins the ONNX node names with " + ";
TensorRT 10+ also lists them in ``Metadata`` as ``[ONNX Layer: <name>]`` entries.  ``Format/Datatype`` is text such as
"Thirty-two wide channel vectorized row major Int8 format.", "Row major linear FP16 format" or "Float"; the layout
changed across versions, so the parser only relies on these keys.  Pure Python: it never imports TensorRT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BOOKKEEPING = frozenset({"Reformat", "NoOp", "Constant", "Shuffle", "Identity"})
# Layer types that compute a unit's conv or matmul (OpenVINO's and TensorRT's names, matched case-insensitively by
# substring: CaskConvolution, CaskGemmMatrixMultiply, gemm, FullyConnected, Subgraph, ...); among several layers that
# name a unit's anchor (a Gemm split into a matmul and a bias add), one of these decides.
COMPUTE_WORDS = ("conv", "gemm", "matrix", "matmul", "fullyconnected", "subgraph", "myelin")
# ``[ONNX Layer: <name>]``, or ``[ONNX Layer: <name> | Local Function: <function>]`` for nodes inside ONNX functions
ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]|]+?)\s*(?:\|\s*Local Function:[^\]]*)?\]")
DATATYPES = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("bfloat", "bf16"), ("half", "fp16"),
             ("fp16", "fp16"), ("float", "fp32"), ("fp32", "fp32"))  # fmt: skip


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: its name, type, the ONNX nodes fused into it, and the precision of its first input."""

    name: str
    kind: str
    onnx_nodes: tuple[str, ...]
    precision: str
    primitive: str = ""  # the kernel, where the engine says (OpenVINO: e.g. brgconv_avx512_I8)
    ms: float | None = None  # time per inference, where the engine was profiled


def datatype(text: str) -> str:
    """``int8`` / ``fp16`` / ``fp32`` / ``bf16`` / ``fp8`` from a ``Format/Datatype`` string, else ``unknown``."""
    lowered = text.lower()
    for needle, name in DATATYPES:
        if needle in lowered:
            return name
    return "unknown"


def engine_layers(information: Mapping[str, Any]) -> list[EngineLayer]:
    """The compute layers of an engine (reformats, no-ops and constants left out)."""
    layers = information.get("Layers", [])
    result = []
    for layer in layers:
        if not isinstance(layer, Mapping) or layer.get("LayerType") in BOOKKEEPING:
            continue
        name = str(layer.get("Name", ""))
        nodes = ONNX_LAYER.findall(str(layer.get("Metadata", ""))) or [n.strip() for n in name.split(" + ")]
        inputs = layer.get("Inputs") or []
        first = inputs[0] if inputs and isinstance(inputs[0], Mapping) else {}
        result.append(EngineLayer(name, str(layer.get("LayerType", "")), tuple(nodes), datatype(_format_text(first))))
    return result


def _format_text(tensor: Mapping[str, Any]) -> str:
    """The text that names a tensor's type: TensorRT 10's ``Format/Datatype``, or TensorRT 11's ``Datatype``.

    TensorRT 11 split the field in two (Polygraphy's inspector reads both layouts); its ``Format`` alone can name
    another type's layout, so ``Datatype`` decides when it is there.
    """
    if "Format/Datatype" in tensor:
        return str(tensor["Format/Datatype"])
    return str(tensor.get("Datatype") or tensor.get("Format") or "")


def computes(kind: str) -> bool:
    """True for a layer type that runs a conv or matmul (see ``COMPUTE_WORDS``)."""
    lowered = kind.lower()
    return any(word in lowered for word in COMPUTE_WORDS)
