"""torch → ONNX export that keeps what later steps need: readable node names and the torch module of each node.

The dynamo exporter is the default (opset ≥ 18, it folds BatchNorm into Conv); the legacy TorchScript exporter is
the fallback.  After export the ONNX model is run with ONNX Runtime on the sample input and compared with torch, so a
silently wrong export never reaches the search.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from trtmix import registry
from trtmix.errors import ExportError
from trtmix.ir.graph import save_onnx
from trtmix.ir.units import MODULE_KEY

LOG = logging.getLogger(__name__)
EXPORTERS = tuple(registry.EXPORTERS)
DEFAULT_OPSET = 19
INLINE_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how closely it matches torch."""

    path: Path
    exporter: str
    opset: int
    nodes: int
    max_abs_diff: float
    reference_max_abs: float
    module_map: dict[str, str]


def export_onnx(
    model: torch.nn.Module,
    sample_inputs: tuple[torch.Tensor, ...],
    output: str | Path,
    *,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    input_names: list[str] | None = None,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export ``model`` to ``output`` and check it against torch on ``sample_inputs``.

    Args:
        model: the torch model (switched to eval mode).
        sample_inputs: one tensor per ``forward`` argument; also the numerical check's input.
        output: the ONNX file to write (atomically).
        exporter: ``dynamo``, ``legacy``, or ``auto`` (dynamo, falling back to legacy if dynamo fails).
        opset: ONNX opset; the dynamo exporter needs ≥ 18.
        dynamic_axes: input/output name → {axis: symbolic name}, e.g. ``{"input": {0: "batch"}}``.
        input_names: names of the graph inputs; default: the names of ``forward``'s parameters (``forward(self, x)``
            gives ``x``), or ``input`` / ``input_0``, ``input_1``, ... where ``forward`` takes ``*args``.
        tolerance: largest accepted max-abs difference, relative to the largest torch output magnitude (min 1).
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"Unknown exporter {exporter!r}.", expected=f"one of {', '.join(EXPORTERS)}")
    if exporter in ("auto", "dynamo") and opset < 18:
        raise ExportError(
            f"The dynamo exporter needs opset ≥ 18 (got {opset}).", fix="use --opset 18 or higher, or --exporter legacy"
        )
    model = model.eval()
    names = input_names or forward_input_names(model, len(sample_inputs))
    if len(names) != len(sample_inputs):
        raise ExportError(f"{len(names)} input names for {len(sample_inputs)} sample inputs.")
    try:
        with torch.no_grad():
            reference = [t.detach().cpu().numpy() for t in _flatten_outputs(model(*sample_inputs))]
    except Exception as err:  # noqa: BLE001 - the user's forward() can raise anything
        raise ExportError(
            f"Running the model on its sample inputs raised {type(err).__name__}: {_first_line(err)}",
            expected="sample inputs that forward() accepts, one tensor per argument",
            fix="check the (model, sample_inputs) your factory returns",
        ) from err
    output_names = _output_names(model, len(reference))
    proto, used = _export_with(model, sample_inputs, exporter, opset, dynamic_axes, names, output_names)
    _check_inputs_kept(proto, names, used)
    module_map = annotate_modules(proto, model, renamed=used == "dynamo")
    diff = _max_abs_diff(proto, sample_inputs, names, reference)
    scale = max(1.0, max(float(np.abs(r).max()) for r in reference))
    if not np.isfinite(diff) or diff > tolerance * scale:
        raise ExportError(
            f"The ONNX export differs from torch by up to {diff:.3g} (outputs reach {scale:.3g}).",
            expected=f"at most {tolerance:g} × {scale:.3g}",
            fix="try --exporter legacy (or dynamo), or raise --tolerance if the model is numerically sensitive",
        )
    save_onnx(proto, output)
    LOG.info(
        "exported %s with %s exporter: %d nodes, max |onnx - torch| = %.3g", output, used, len(proto.graph.node), diff
    )
    return ExportReport(Path(output), used, opset, len(proto.graph.node), diff, scale, module_map)


def forward_input_names(model: torch.nn.Module, count: int) -> list[str]:
    """The names of ``forward``'s first ``count`` parameters, which users write in their recipes' feeds.

    ``input`` / ``input_0``, ``input_1``, ... when ``forward`` takes ``*args`` or fewer named parameters.
    """
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        parameters = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError):
        parameters = []
    if len(parameters) >= count:
        return parameters[:count]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def export_stamp(source: str, exporter: str, opset: int, input_names: list[str] | None) -> str:
    """What an export of ``source`` depends on: the factory's own source file, the exporter, opset and input names."""
    from trtmix.data.user_code import source_identity

    module = source.rpartition(":")[0] or source
    stamp = {"source": source, "factory": source_identity(module), "exporter": exporter, "opset": opset,
             "input_names": input_names}  # fmt: skip
    return json.dumps(stamp, sort_keys=True)


def export_once(
    source: str,
    path: Path,
    *,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    input_names: list[str] | None = None,
) -> Path:
    """Export the ``MODULE:FUNCTION`` factory to ``path`` unless an export with the same stamp is there.

    The stamp (``path`` with suffix ``.source``) records the factory's source file contents, the exporter, the opset
    and the input names: a change to any of them exports again.
    """
    from trtmix.data.user_code import load_model_factory
    from trtmix.io import atomic_write_text

    stamp_path = path.with_suffix(".source")
    stamp = export_stamp(source, exporter, opset, input_names)
    if path.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
        LOG.info("reusing the export %s", path)
        return path
    model, samples = load_model_factory(source)
    export_onnx(model, samples, path, exporter=exporter, opset=opset, input_names=input_names)
    atomic_write_text(stamp_path, stamp)
    return path
    model, samples = load_model_factory(source)
    export_onnx(model, samples, path, exporter=exporter, input_names=input_names)
    atomic_write_text(stamp, source)
    return path


def _output_names(model: Any, count: int) -> list[str]:
    """The graph's output names: the module's ``output_names`` when it names each output, else ``output_<i>``.

    A metric of the user's reads outputs by name (``trtmix.data.user_metric``); one output alone is ``output``.
    """
    names = getattr(model, "output_names", None)
    if isinstance(names, (list, tuple)) and len(names) == count and all(isinstance(n, str) for n in names):
        return list(names)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _export_with(
    model: torch.nn.Module,
    sample_inputs: tuple[torch.Tensor, ...],
    exporter: str,
    opset: int,
    dynamic_axes: dict[str, dict[int, str]] | None,
    input_names: list[str],
    output_names: list[str],
) -> tuple[onnx.ModelProto, str]:
    """Run the requested exporter (with the legacy fallback for ``auto``) and load the result into memory."""
    attempts = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    failures = []
    for name in attempts:
        try:
            return _run_exporter(model, sample_inputs, name, opset, dynamic_axes, input_names, output_names), name
        except Exception as err:  # noqa: BLE001 - torch raises many unrelated types; we report them all
            failures.append(f"{name}: {type(err).__name__}: {_first_line(err)}")
            if name != attempts[-1]:
                LOG.warning("dynamo export failed (%s); falling back to the legacy exporter", failures[-1])
    raise ExportError(
        "torch.onnx.export failed: " + "; ".join(failures),
        expected="a model torch can export with the given sample inputs",
        fix="check the sample inputs match forward(); run with --verbose for the full torch error",
    )


def _run_exporter(
    model: torch.nn.Module,
    sample_inputs: tuple[torch.Tensor, ...],
    exporter: str,
    opset: int,
    dynamic_axes: dict[str, dict[int, str]] | None,
    input_names: list[str],
    output_names: list[str],
) -> onnx.ModelProto:
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        kwargs: dict[str, Any] = {"input_names": input_names, "output_names": output_names, "opset_version": opset}
        if dynamic_axes:
            kwargs["dynamic_axes"] = dynamic_axes
        if exporter == "dynamo":
            kwargs["external_data"] = parameter_bytes >= INLINE_LIMIT_BYTES
            torch.onnx.export(model, sample_inputs, str(path), dynamo=True, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, sample_inputs, str(path), dynamo=False, **kwargs)
        return onnx.load(str(path))


def annotate_modules(proto: onnx.ModelProto, model: torch.nn.Module, renamed: bool) -> dict[str, str]:
    """Record each node's torch module in its ``trtmix.module`` metadata; rename dynamo's opaque node names.

    The module of a node is the owner of its parameter input if it has one (this survives BatchNorm folding, where
    dynamo attributes the fused Conv to the BatchNorm), else the deepest module in its export scope.
    """
    module_names = {name for name, _ in model.named_modules() if name}
    parameter_owner = {name: name.rpartition(".")[0] for name, _ in model.named_parameters()}
    counts: Counter[str] = Counter()
    module_map = {}
    for node in proto.graph.node:
        module = next((parameter_owner[i] for i in node.input if parameter_owner.get(i)), None)
        module = module or _scope_module(node, module_names)
        if renamed:
            base = f"/{module}/{node.op_type}" if module else f"/{node.op_type}"
            counts[base] += 1
            node.name = base if counts[base] == 1 else f"{base}_{counts[base] - 1}"
        if module:
            node.metadata_props.add(key=MODULE_KEY, value=module)
            module_map[node.name] = module
    return module_map


def _scope_module(node: onnx.NodeProto, module_names: set[str]) -> str | None:
    """The deepest torch module named in the node's scope (dynamo metadata or the legacy ``/a/b/Op`` name)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return next((s for s in reversed(scopes) if s in module_names), None)
    path = ""
    best = None
    for segment in node.name.strip("/").split("/")[:-1]:
        path = segment if not path or segment.startswith(path + ".") else f"{path}.{segment}"
        if path in module_names:
            best = path
    return best


def _first_line(err: Exception) -> str:
    """The first line of an exception message, without the terminal colour codes torch adds."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return lines[0] if lines else ""


def _check_inputs_kept(proto: onnx.ModelProto, names: list[str], exporter: str) -> None:
    """An input the graph lost means the outputs no longer depend on it: the export is silently wrong."""
    kept = {value.name for value in proto.graph.input}
    lost = [name for name in names if name not in kept]
    if lost:
        raise ExportError(
            f"The {exporter} export has no graph input {', '.join(map(repr, lost))}: its outputs do not depend on it.",
            expected="every forward() argument to reach the outputs through torch operations",
            fix="keep the computation in torch (no .numpy(), .item() or Python control flow on tensor values)",
        )


def _flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """Tensors of a model's output in the order the exporter flattens them (tuples, lists, dicts, dataclasses)."""
    leaves, _ = torch.utils._pytree.tree_flatten(outputs)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _max_abs_diff(
    proto: onnx.ModelProto, sample_inputs: tuple[torch.Tensor, ...], names: list[str], reference: list[np.ndarray]
) -> float:
    """Largest |ONNX Runtime − torch| over all outputs on the sample inputs."""
    from trtmix.errors import BackendError
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(names, sample_inputs, strict=False)}
    try:
        with OnnxRuntimeRunner(proto, optimize=True) as runner:
            results = runner.infer(feeds)
    except BackendError as err:
        raise ExportError(f"ONNX Runtime cannot run the exported model: {err}", fix="try the other --exporter") from err
    if len(results) != len(reference):
        raise ExportError(f"The ONNX model has {len(results)} outputs but torch returned {len(reference)} tensors.")
    return max(
        float(np.abs(np.asarray(r, dtype=np.float64) - ref).max()) if ref.size else 0.0
        for r, ref in zip(results, reference, strict=False)
    )
