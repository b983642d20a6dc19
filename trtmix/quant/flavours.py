"""Flavours: how one precision plan is written into a graph for one kind of engine.

A flavour owns everything that differs between engines: where Q/DQ go (its sites), how many integer levels weights
use, the opset, the float base of the graph, the rules a compiled graph must pass, and the backends that run it as
intended.  ``trtmix.quant.compile`` does the graph surgery and asks the flavour every engine-specific question, so
adding an engine means adding a flavour here, not another if-branch across the code base.

* ``tensorrt`` — TensorRT's explicit quantization: symmetric int8 (zero point 0), per-tensor activations,
  per-output-channel weights as Q→DQ on the float weight, a float16 graph, opset ≥ 19 (float16 Q/DQ scales).  At a
  residual Add behind an INT8 conv whose other input is int8 too, the skip input is quantized so TensorRT can fuse
  the Add into the conv; behind MatMul/Gemm units (a transformer's residual stream) neither input is.
  ``placement="modelopt"`` follows NVIDIA ModelOpt's ONNX INT8 placement instead at Adds behind MatMul/Gemm units:
  both inputs quantized (see ``TensorRTFlavour``).
* ``ort-cpu`` — what ONNX Runtime's CPU kernels fuse into int8 kernels: uint8 asymmetric activations, int8
  per-channel weights stored as int8 initializers within ±63 (ORT's ``reduce_range``), a float32 base, conv outputs
  quantized (QLinearConv), Gemm biases as int32 (QGemm), and residual Adds between quantized tensors quantized on
  both inputs and the output (QLinearAdd), a Relu after them folded into the uint8 zero point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

import onnx

from trtmix import registry
from trtmix.calibration.ranges import Ranges
from trtmix.errors import CompileError
from trtmix.ir.domains import describe as describe_foreign
from trtmix.ir.domains import foreign_ops
from trtmix.ir.graph import GraphIndex, two_activation_adds
from trtmix.ir.units import KIND_CONV, Unit
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.qdq import INT8_MAX, REDUCED_INT8_MAX
from trtmix.quant.rules import ort_cpu_issues, tensorrt_issues
from trtmix.runtime.cpu import cpu_features

ALL_READERS = "*"
PLACEMENTS = ("trtmix", "modelopt")  # the tensorrt flavour's residual-Add rules; see TensorRTFlavour
DEFAULT_PLACEMENT = "trtmix"
# bumped when the default placement's residual rule changes, so the artifacts and journals of the old rule are
# not reused (2: behind MatMul/Gemm units the skip input stays float, 2026-12-03)
RESIDUAL_RULE = 2


@dataclass
class QuantizationSites:
    """Where Q/DQ go.

    ``activations`` maps a tensor to the names of the nodes to reroute through its Q/DQ (or ALL_READERS);
    ``weight_units`` lists the units whose weights are quantized.
    """

    activations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    weight_units: list[Unit] = field(default_factory=list)
    dropped_relus: dict[str, str] = field(default_factory=dict)  # Relu node → the Add node that takes its output


class Flavour(ABC):
    """One way of writing a plan into a graph; see the module docstring."""

    name: ClassVar[str]
    opset: ClassVar[int]
    symmetric: ClassVar[bool]  # activations: signed int8 with zero point 0, else uint8 asymmetric
    float_base: ClassVar[Precision]  # the precision of everything outside INT8 and fp32 units
    backends: ClassVar[tuple[str, ...]]  # the backends this flavour was made for
    refused: ClassVar[tuple[str, ...]]  # backends that cannot run this flavour's graphs as planned
    weight_levels: ClassVar[int]  # largest |q| of an int8 weight
    float_weights: ClassVar[bool]  # weights stay float behind Q→DQ (else int8 initializers → DQ)
    int32_gemm_bias: ClassVar[bool]  # Gemm biases as int32 → DQ

    @abstractmethod
    def sites(self, model: onnx.ModelProto, int8_units: list[Unit], ranges: Ranges | None) -> QuantizationSites:
        """Where the Q/DQ of ``int8_units`` go in ``model``."""

    @abstractmethod
    def issues(self, model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> list[str]:
        """Every rule of this flavour that the compiled ``model`` breaks (empty when it is fit to ship)."""

    def options(self) -> dict[str, object]:
        """Everything about this flavour that changes a compiled graph: part of every artifact's key."""
        return {"name": self.name, "opset": self.opset, "weight_levels": self.weight_levels}

    def note(self, backend: str) -> str | None:
        """What the report says when ``backend`` runs a flavour made for another engine (None when made for it)."""
        if backend in self.backends or backend == "auto":
            return None
        return f"the {self.name} flavour was made for {' and '.join(self.backends)}; {backend} runs it as a plain graph"

    def check_model(self, model: onnx.ModelProto) -> None:
        """Refuse, before any work, a graph this flavour's engines cannot parse (none refused by default)."""
        return None

    def metadata(self) -> dict[str, str]:
        """Key/values written into every compiled graph's ``metadata_props`` (the settings a reader needs).

        ``trtmix.flavour`` lets ``trtmix profile --backend auto`` pick the engine the graph was written for.
        """
        return {"trtmix.flavour": self.name, "trtmix.weight_bits": "8"}

    def check_backend(self, backend: str) -> None:
        """Refuse, before any work, a backend that cannot run this flavour's graphs as planned."""
        if backend not in self.refused:
            return
        fits = [name for name, flavour in FLAVOURS.items() if backend in flavour.backends]
        raise CompileError(
            f"The {self.name} flavour cannot run on the {backend} backend: "
            f"{registry.FLAVOURS[self.name]}, which {backend} does not run as planned.",
            expected=f"--backend {' or '.join(self.backends)} (or auto) with --flavour {self.name}",
            fix=f"use --flavour {' or '.join(fits)} with --backend {backend}" if fits else "choose another backend",
        )


class TensorRTFlavour(Flavour):
    """TensorRT strongly typed explicit quantization; OpenVINO builds it as it is, ONNX Runtime as a simulation.

    ``placement`` says where Q/DQ go beyond every INT8 unit's inputs (both placements agree there, attention
    MatMuls included, and neither quantizes LayerNorm, GELU, Softmax or any output):

    * ``trtmix`` (default): at a residual Add behind an INT8 conv whose other input comes from an INT8 unit (or is
      quantized for one), the skip input only: TensorRT's residual fusion wants the conv's partner input int8 and
      the conv's own output float (TensorRT developer guide, Q/DQ placement recommendations).  Behind MatMul/Gemm
      units, neither input: the skip input is a transformer's residual stream, whose outlier channels one int8 scale
      cannot hold (MiniLM-L6 all-INT8 cosine 0.9888 with it quantized, 0.9976 float: ``_residual_inputs``).
    * ``modelopt``: NVIDIA ModelOpt's ONNX INT8 placement (``modelopt/onnx/quantization/int8.py``
      ``_find_nodes_to_quantize``).  At Adds behind a conv it is the same rule (``build_non_residual_input_map`` finds a
      conv backbone and keeps the conv's input float).  At Adds behind MatMul/Gemm units there is no conv backbone, so
      the Add is a "KGEN head" (``graph_utils.filter_quantizable_kgen_heads``): both inputs are quantized, the unit's
      output and the skip input, unless the skip input has no other quantized reader; an Add feeding Softmax (the
      attention mask) is not quantized.  On MiniLM this adds a Q/DQ on each of the 12 residual Adds' branch input.

    ``trtmix`` stays the default, per engine evidence (``benchmarks/placement.py``, benchmarks/README.md "Q/DQ
    placement"; 2026-12-03, AMD EPYC with VNNI and BF16, 2 cores shared, load average ~8): MiniLM-L6 all-INT8 cosine
    to FP32 on ONNX Runtime 0.9888 (trtmix, then still quantizing the skip input behind MatMuls) against 0.8340
    (modelopt; 0.8525 with the added Q/DQ ranged by entropy, ModelOpt's default calibrator), the same on OpenVINO;
    OpenVINO latency 0.987x and 0.999x trtmix's in two interleaved runs (9/15 and 8/15 rounds faster: noise), because
    OpenVINO runs each residual Add as the same int8 ``Subgraph`` with one float input either way.  The branch inputs
    carry BERT's outlier channels: layer 0's FFN output ranges up to 195 (max calibration), an int8 step of 1.5 for a
    tensor whose low end is -2.7; so does the skip input, which is why the default now leaves both float there.  On
    CNNs whose residual Adds follow convs (digits ResNet, EfficientNet-Lite0) the two placements write the same graph.
    """

    name = "tensorrt"
    opset = 19
    symmetric = True
    float_base = Precision.FP16
    backends = ("tensorrt", "openvino")
    refused = ()
    weight_levels = INT8_MAX
    float_weights = True
    int32_gemm_bias = False

    def __init__(self, placement: str = DEFAULT_PLACEMENT) -> None:
        if placement not in PLACEMENTS:
            raise CompileError(f"Unknown Q/DQ placement {placement!r}.", expected=f"one of {', '.join(PLACEMENTS)}")
        self.placement = placement

    def options(self) -> dict[str, object]:
        """The base options, the residual rule's version, and the placement when it is not the default.

        They key every artifact and the journal: a job resumed after the default's rule changed builds and scores
        its graphs again instead of reusing ones the old rule wrote.
        """
        options = {**super().options(), "residual_rule": RESIDUAL_RULE}
        if self.placement != DEFAULT_PLACEMENT:
            options["placement"] = self.placement
        return options

    def metadata(self) -> dict[str, str]:
        """The base metadata and the placement, so a reader of the graph knows which rule put its Q/DQ."""
        return {**super().metadata(), "trtmix.placement": self.placement}

    def sites(self, model: onnx.ModelProto, int8_units: list[Unit], ranges: Ranges | None) -> QuantizationSites:
        """Inputs of every INT8 unit, plus residual Add inputs by the placement's rule."""
        return _tensorrt_sites(model, int8_units, self.placement)

    def issues(self, model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> list[str]:
        """TensorRT's Q/DQ and typing rules (``trtmix.quant.rules``)."""
        return tensorrt_issues(model, units, plan)

    def check_model(self, model: onnx.ModelProto) -> None:
        """TensorRT's ONNX parser reads the standard domain only; custom-domain ops each need a plugin."""
        ops = foreign_ops(model)
        if ops:
            raise CompileError(
                "TensorRT's ONNX parser cannot parse this graph: it holds ops outside the standard ONNX domain, "
                "for which TensorRT has no built-in layer:\n" + describe_foreign(ops),
                expected="a graph of standard ONNX ops (e.g. the export before ONNX Runtime's transformer optimizer)",
                fix="give trtmix the unfused export, or use --flavour ort-cpu to target ONNX Runtime",
            )


class OrtCpuFlavour(Flavour):
    """ONNX Runtime's CPU int8 kernels.

    Weights are 8-bit where the CPU has VNNI or AMX, whose u8×s8 dot products accumulate exactly; without them ONNX
    Runtime's u8×s8 kernels can saturate their 16-bit intermediate sums, so weights are cut to 7 bits (±63, ORT's
    ``reduce_range``). Detected when the flavour is made; ``weight_bits`` (``--weight-bits``) overrides it.
    """

    name = "ort-cpu"
    opset = 13
    symmetric = False
    float_base = Precision.FP32
    backends = ("onnxruntime",)
    refused = ("tensorrt",)
    float_weights = False
    int32_gemm_bias = True

    def __init__(self, weight_bits: int | None = None) -> None:
        if weight_bits not in (None, 7, 8):
            raise CompileError(f"--weight-bits {weight_bits} is not supported.", expected="7 or 8")
        cpu = cpu_features()
        self.weight_bits = weight_bits or (8 if cpu.int8_exact else 7)
        self.weight_bits_reason = (
            "set by --weight-bits" if weight_bits else
            f"{'VNNI/AMX' if cpu.int8_exact else 'no VNNI or AMX'} on this CPU ({cpu.model})"
        )  # fmt: skip
        self.weight_levels = INT8_MAX if self.weight_bits == 8 else REDUCED_INT8_MAX  # type: ignore[misc]

    def metadata(self) -> dict[str, str]:
        """The weight width and why it was chosen, stored in every compiled graph."""
        return {"trtmix.flavour": self.name, "trtmix.weight_bits": str(self.weight_bits),
                "trtmix.weight_bits_reason": self.weight_bits_reason}  # fmt: skip

    def sites(self, model: onnx.ModelProto, int8_units: list[Unit], ranges: Ranges | None) -> QuantizationSites:
        """Unit inputs, conv outputs, and residual Adds between quantized tensors (QLinearAdd)."""
        return _ort_sites(model, int8_units, ranges)

    def issues(self, model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> list[str]:
        """The plan's Q/DQ, uint8 activations and int8 weights within ±``weight_levels``."""
        return ort_cpu_issues(model, units, plan, self.weight_levels)


FLAVOURS: dict[str, Flavour] = {flavour.name: flavour for flavour in (TensorRTFlavour(), OrtCpuFlavour())}
assert set(FLAVOURS) == set(registry.FLAVOURS), "every flavour is named in trtmix.registry"


def get_flavour(flavour: str | Flavour, weight_bits: int | None = None) -> Flavour:
    """The flavour object called ``flavour`` (or ``flavour`` itself); ``weight_bits`` configures ``ort-cpu``."""
    if isinstance(flavour, Flavour):
        return flavour
    if flavour not in FLAVOURS:
        raise CompileError(f"Unknown flavour {flavour!r}.", expected=f"one of {', '.join(FLAVOURS)}")
    if weight_bits is None:
        return FLAVOURS[flavour]
    if flavour != OrtCpuFlavour.name:
        if weight_bits == 8:
            return FLAVOURS[flavour]
        raise CompileError(
            f"--weight-bits {weight_bits} applies to the ort-cpu flavour only.",
            expected="no --weight-bits with --flavour tensorrt (TensorRT's int8 weights are always 8-bit)",
        )
    return OrtCpuFlavour(weight_bits)


def _tensorrt_sites(model: onnx.ModelProto, int8_units: list[Unit], placement: str = DEFAULT_PLACEMENT
                    ) -> QuantizationSites:  # fmt: skip
    """Inputs of every INT8 unit, plus residual Add inputs: ``placement``'s rule (see ``TensorRTFlavour``)."""
    sites = QuantizationSites(weight_units=[u for u in int8_units if u.weight is not None])
    for unit in int8_units:
        for tensor in unit.inputs:
            sites.activations[tensor].add(unit.name)
    residual = _modelopt_residual_inputs if placement == "modelopt" else _residual_inputs
    for node_name, tensor in residual(model, int8_units):
        sites.activations[tensor].add(node_name)
    return sites


def _modelopt_residual_inputs(model: onnx.ModelProto, int8_units: list[Unit]) -> list[tuple[str, str]]:
    """(Add node, input tensor) pairs ModelOpt's ONNX INT8 placement quantizes at two-activation Adds.

    Adds behind a conv unit keep ``_residual_inputs``' rule, which is ModelOpt's too (its non-residual input, the
    conv's, stays float so TensorRT fuses the Add into the conv).  Any other Add with an input from an INT8 unit is
    what ModelOpt calls a KGEN head: that input is quantized, and the other one too where another INT8 unit reads it
    quantized already (ModelOpt's "other quantizable consumer"); an Add feeding Softmax (the attention mask) is left
    float, as ModelOpt's ``_is_mha_epilogue_pattern`` does.  Trtmix's plan replaces ModelOpt's all-INT8 world: only
    INT8 units count as quantized partitions.
    """
    produced_by = {u.output: u for u in int8_units}
    quantized_inputs = {t for u in int8_units for t in u.inputs}
    index = GraphIndex(model)
    adds = list(two_activation_adds(model, index))
    conv_adds = {node.name for node, activations in adds if _behind_conv(activations, produced_by)}
    chosen = _residual_inputs(model, int8_units)  # at the Adds behind a conv, and only there
    for node, activations in adds:
        if node.name in conv_adds or _feeds_softmax(index, node) or not any(t in produced_by for t in activations):
            continue
        chosen.extend((node.name, t) for t in activations if t in produced_by or t in quantized_inputs)
    return chosen


def _feeds_softmax(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """True when ``node``'s output reaches a Softmax through reshapes only (the attention mask's Add)."""
    readers = list(index.consumers.get(node.output[0], []))
    while readers:
        reader = readers.pop()
        if reader.op_type == "Softmax":
            return True
        if reader.op_type in ("Reshape", "Flatten"):
            readers.extend(index.consumers.get(reader.output[0], []))
    return False


def _residual_inputs(model: onnx.ModelProto, int8_units: list[Unit]) -> list[tuple[str, str]]:
    """(Add node, input tensor) pairs to quantize at residual Adds behind an INT8 conv whose other input is int8 too.

    The input already quantized for another INT8 unit (the skip branch) is chosen; if neither is, the output of the
    unit with fewer MACs, so the bigger conv keeps the residual fusion.  Only behind a conv: that is the fusion
    TensorRT's Q/DQ placement guide describes.  Behind MatMul/Gemm units the skip input is a transformer's residual
    stream, a LayerNorm output with outlier channels, and one int8 scale for it cost MiniLM-L6 most of its all-INT8
    error: with the skip input quantized at its two residual Adds per layer, all-INT8 cosine to FP32 was 0.9888;
    float, 0.9976 (ONNX Runtime, search split; ``benchmarks/placement.py``, at the same OpenVINO latency).  The Add
    then reads the unit's float output and the float residual, as in NNCF's placement.
    """
    produced_by = {u.output: u for u in int8_units}
    quantized_inputs = {t for u in int8_units for t in u.inputs}
    chosen = []
    for node, activations in two_activation_adds(model):
        if not all(t in produced_by or t in quantized_inputs for t in activations):
            continue
        if not _behind_conv(activations, produced_by):
            continue
        picks = [t for t in activations if t in quantized_inputs or t not in produced_by]
        if not picks:
            picks = [min(activations, key=lambda t: produced_by[t].macs)]
        chosen.extend((node.name, t) for t in picks)
    return chosen


def _behind_conv(activations: list[str], produced_by: dict[str, Unit]) -> bool:
    """True when an INT8 convolution writes one of a residual Add's inputs (TensorRT's conv residual fusion)."""
    return any(t in produced_by and produced_by[t].kind == KIND_CONV for t in activations)


def _ort_sites(model: onnx.ModelProto, int8_units: list[Unit], ranges: Ranges | None) -> QuantizationSites:
    """Where ORT's CPU kernels want Q/DQ.

    Inputs of every INT8 unit (rerouting that unit), the output of INT8 convs (rerouting every reader), and the
    residual Adds whose inputs are both quantized already (see the module docstring).
    """
    sites = QuantizationSites(weight_units=[u for u in int8_units if u.weight is not None])
    for unit in int8_units:
        for tensor in unit.inputs:
            sites.activations[tensor].add(unit.name)
    for unit in int8_units:
        if unit.kind == KIND_CONV:
            sites.activations[unit.output] = {ALL_READERS}
    if ranges is not None:
        _ort_residual_adds(model, sites, ranges)
    return sites


def _ort_residual_adds(model: onnx.ModelProto, sites: QuantizationSites, ranges: Ranges) -> None:
    """Quantize the inputs and output of Adds whose two activation inputs already have a Q/DQ (QLinearAdd)."""
    index = GraphIndex(model)
    graph_outputs = {output.name for output in model.graph.output}
    for node, activations in two_activation_adds(model, index):
        if not all(t in sites.activations for t in activations):
            continue
        readers = index.consumers.get(node.output[0], [])
        output = node.output[0]
        relu_output = readers[0].output[0] if len(readers) == 1 and readers[0].op_type == "Relu" else None
        if relu_output in ranges.tensors and relu_output not in graph_outputs and ranges.tensors[relu_output].min >= 0:
            sites.dropped_relus[readers[0].name] = node.name
            output = relu_output
        elif output not in ranges.tensors:
            continue
        for tensor in activations:
            if ALL_READERS not in sites.activations[tensor]:
                sites.activations[tensor].add(node.name)
        sites.activations[output] = {ALL_READERS}
