"""Ops outside the standard ONNX domain: what they hide from quantization, and which engines cannot parse them.

Graphs made by ONNX Runtime's transformer optimizer hold ``com.microsoft`` ops (Attention, SkipLayerNormalization,
BiasGelu, ...). Their matrix multiplies live inside the op, so no precision plan can reach them: trtmix lists them as
not quantizable, with the reason, instead of pretending they are units. TensorRT's ONNX parser knows none of them
(it needs a plugin per op), so the ``tensorrt`` flavour refuses such a graph before any work.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})

# Fused ops whose matrix multiplies (the work a unit would quantize) are inside the op.
HIDES_MATMULS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "DecoderAttention",
        "EmbedLayerNormalization",
        "FusedMatMul",
        "FusedConv",
        "FusedGemm",
        "MatMulNBits",
    }
)


@dataclass(frozen=True)
class ForeignOp:
    """All nodes of one op type from a non-standard domain."""

    domain: str
    op_type: str
    nodes: tuple[str, ...]

    @property
    def reason(self) -> str:
        """Why nothing inside these nodes is quantized."""
        what = f"{len(self.nodes)} {self.domain} {self.op_type} node{'s' if len(self.nodes) > 1 else ''}"
        if self.op_type in HIDES_MATMULS:
            return f"{what}: the matrix multiplies are inside the fused op, which no plan can quantize; they stay float"
        return f"{what}: not a Conv/Gemm/MatMul, so it is not a unit; it runs as the engine implements it"


def foreign_ops(model: onnx.ModelProto) -> list[ForeignOp]:
    """The non-standard-domain ops of ``model`` (main graph), grouped by domain and type, in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            groups[(node.domain, node.op_type)].append(node.name)
    return [ForeignOp(domain, op, tuple(names)) for (domain, op), names in groups.items()]


def describe(ops: list[ForeignOp]) -> str:
    """One line per op type, for errors and ``trtmix units``."""
    return "\n".join(f"  {op.reason} (e.g. {op.nodes[0]})" for op in ops)
