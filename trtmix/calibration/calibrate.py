"""Calibration: activation ranges measured once per model and data, reused by every compile.

One pass of ONNX Runtime over the data exposes every tensor a plan may quantize as an extra graph output and folds
each batch into a streaming |x| histogram (``trtmix.calibration.histogram``), so memory stays bounded however
large the set.
The method then turns histograms into ranges: ``max`` (observed min/max), ``percentile``, ``entropy`` (TensorRT's
KL threshold) or ``mse``.  Weights get per-output-channel amax, optionally MSE-clipped.

Results are cached under the model hash, the data's identity (recipe spec and file contents), split, batch count and
settings; the histograms are cached separately, so trying another method never touches the data again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from trtmix import registry
from trtmix.calibration.channels import ChannelStats, ChannelSummary, tracked_tensors
from trtmix.calibration.histogram import (
    TensorHistogram,
    entropy_threshold,
    mse_threshold,
    mse_weight_amax,
    percentile_threshold,
)
from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.data.recipes import checked_batches
from trtmix.data.user_code import source_identity
from trtmix.errors import CalibrationError
from trtmix.io import atomic_write_bytes, atomic_write_text
from trtmix.ir.graph import GraphIndex, two_activation_adds
from trtmix.ir.large import model_sha256, shape_view
from trtmix.ir.units import Unit
from trtmix.progress import bar as progress_bar

LOG = logging.getLogger(__name__)
METHODS = tuple(registry.CALIBRATION_METHODS)
WEIGHT_METHODS = tuple(registry.WEIGHT_METHODS)
# Part of every cache key: bump it whenever a fix changes what a range method or the histograms compute, so no cache
# written before the fix is served after it.
CACHE_FORMAT = 4  # 3: only tensors a plan can quantize are calibrated; 4: channel statistics


@dataclass(frozen=True)
class CalibrationConfig:
    """How ranges are computed: activation method, its percentile, how many batches, weight method."""

    method: str = "max"
    percentile: float = 99.99
    batches: int = 8
    weights: str = "max"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(
                f"Unknown calibration method {self.method!r}.", expected=f"one of {', '.join(METHODS)}"
            )
        if self.weights not in WEIGHT_METHODS:
            raise CalibrationError(
                f"Unknown weight method {self.weights!r}.", expected=f"one of {', '.join(WEIGHT_METHODS)}"
            )
        if not 0 < self.percentile <= 100:
            raise CalibrationError(f"--percentile must be in (0, 100] (got {self.percentile}).")
        if self.batches < 1:
            raise CalibrationError(f"--batches must be at least 1 (got {self.batches}).")


def tensor_owners(model: onnx.ModelProto, units: list[Unit]) -> dict[str, list[str]]:
    """Every tensor some plan may quantize, with the units (or residual Adds) that quantize it.

    Unit inputs and outputs, and the outputs of residual Adds whose two inputs are both among those (plus the Relu
    right after such an Add), which the ``ort-cpu`` flavour quantizes for QLinearAdd.  Nothing else: an attention
    mask added to the scores holds -inf on padding, legitimately, and no plan ever quantizes it.
    """
    owners: dict[str, list[str]] = defaultdict(list)
    for unit in units:
        for tensor in (*unit.inputs, unit.output):
            owners[tensor].append(unit.name)
    index = GraphIndex(model)
    for node, activations in two_activation_adds(model, index):
        if all(tensor in owners for tensor in activations):
            owners[node.output[0]].append(f"residual {node.name}")
            readers = index.consumers.get(node.output[0], [])
            if len(readers) == 1 and readers[0].op_type == "Relu":
                owners[readers[0].output[0]].append(f"residual {node.name}")
    return dict(owners)


def tensors_to_calibrate(model: onnx.ModelProto, units: list[Unit]) -> list[str]:
    """Every tensor some plan may quantize (``tensor_owners``), sorted."""
    return sorted(tensor_owners(model, units))


def collect_histograms(
    model: onnx.ModelProto,
    batches: Iterable[object],
    tensors: list[str],
    limit: int | None = None,
    progress: bool = True,
    owners: dict[str, list[str]] | None = None,
) -> tuple[dict[str, TensorHistogram], int]:
    """One ONNX Runtime pass of the float model over at most ``limit`` batches: a histogram per tensor.

    ``owners`` (tensor → the units that quantize it) lets a NaN/Inf error name the unit concerned.
    """
    histograms, count, _ = collect_statistics(model, batches, tensors, limit, progress, owners)
    return histograms, count


def collect_statistics(
    model: onnx.ModelProto,
    batches: Iterable[object],
    tensors: list[str],
    limit: int | None = None,
    progress: bool = True,
    owners: dict[str, list[str]] | None = None,
    channels: dict[str, int] | None = None,
) -> tuple[dict[str, TensorHistogram], int, dict[str, ChannelStats]]:
    """``collect_histograms``, plus per-channel statistics of ``channels`` (tensor → channel axis) in the same pass."""
    from trtmix.runtime.onnxruntime import ort_session

    session = ort_session(model, extra_outputs=_outputs(model, tensors))
    wanted = set(tensors)
    output_names = [o.name for o in session.get_outputs() if o.name in wanted]
    histograms = {name: TensorHistogram() for name in output_names}
    per_channel = {name: ChannelStats(axis) for name, axis in (channels or {}).items() if name in histograms}
    count = 0
    feeds = checked_batches(batches, model, limit)
    shown = progress_bar(feeds, desc="calibrate", disable=not progress, unit="batch", total=limit)
    for index, feed in enumerate(shown):
        for name, value in zip(output_names, session.run(output_names, feed), strict=True):
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                quantized_by = ", ".join((owners or {}).get(name, [])) or "a unit"
                raise CalibrationError(
                    f"Batch {index}: tensor {name!r}, which {quantized_by} would quantize, holds NaN or Inf in the "
                    "float model.",
                    fix="check the inputs of that batch; NaN/Inf never become a scale",
                )
            histograms[name].add(value)
            if name in per_channel:
                per_channel[name].add(value)
        count += 1
    return histograms, count, per_channel


def _unit_statistics(
    model: onnx.ModelProto, units: list[Unit], batches: Iterable[object], limit: int, progress: bool
) -> tuple[dict[str, TensorHistogram], int, dict[str, ChannelSummary]]:
    """The one pass ``calibrate`` needs: histograms, channel summaries of unit inputs, and the batches seen."""
    owners = tensor_owners(model, units)
    histograms, count, stats = collect_statistics(model, batches, sorted(owners), limit, progress, owners,
                                                  tracked_tensors(units))  # fmt: skip
    return histograms, count, {name: stat.summary() for name, stat in stats.items() if stat.count}


def ranges_from_histograms(histograms: dict[str, TensorHistogram], config: CalibrationConfig) -> dict[str, TensorRange]:
    """Per-tensor ranges by ``config.method``; clipping methods shrink [min, max] to [−T, T]."""
    pick: Callable[[TensorHistogram], float] = {
        "max": lambda h: h.amax,
        "percentile": lambda h: percentile_threshold(h, config.percentile),
        "entropy": entropy_threshold,
        "mse": mse_threshold,
    }[config.method]
    ranges = {}
    for name, hist in histograms.items():
        if not np.isfinite(hist.minimum):
            continue
        threshold = pick(hist)
        ranges[name] = TensorRange(max(hist.minimum, -threshold), min(hist.maximum, threshold))
    return ranges


def weight_ranges(model: onnx.ModelProto, units: list[Unit], method: str) -> dict[str, tuple[float, ...]]:
    """Per-output-channel weight amax for ``mse`` (``max`` is what compile computes by default, so it is omitted)."""
    if method == "max":
        return {}
    index = GraphIndex(model)
    result = {}
    for unit in units:
        if unit.weight is None or unit.weight_axis is None:
            continue
        weight = index.constant_value(unit.weight)
        if weight is not None:
            result[unit.weight] = tuple(float(v) for v in mse_weight_amax(weight, unit.weight_axis))
    return result


def calibrate(
    model: onnx.ModelProto,
    units: list[Unit],
    batches: Iterable[object],
    config: CalibrationConfig,
    *,
    progress: bool = True,
    histograms: dict[str, TensorHistogram] | None = None,
    channels: dict[str, ChannelSummary] | None = None,
) -> Ranges:
    """Ranges of every tensor a plan may quantize (histograms and channel statistics are collected unless given)."""
    count, summaries = None, channels
    if histograms is None:
        histograms, count, summaries = _unit_statistics(model, units, batches, config.batches, progress)
    ranges = ranges_from_histograms(histograms, config)
    meta = {"model_sha256": model_sha256(model), **asdict(config)}
    if count is not None:
        meta["batches_seen"] = count
    LOG.info("calibrated %d tensors (%s)", len(ranges), config.method)
    return Ranges(tensors=ranges, meta=meta, weights=weight_ranges(model, units, config.weights),
                  channels=summaries or {})  # fmt: skip


def calibrate_max(
    model: onnx.ModelProto,
    batches: Iterable[object],
    tensors: list[str],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> Ranges:
    """Observed min/max of ``tensors``: the simplest calibration, for tests and quick builds."""
    histograms, count = collect_histograms(model, batches, tensors, limit, progress)
    ranges = ranges_from_histograms(histograms, CalibrationConfig())
    return Ranges(tensors=ranges, meta={"model_sha256": model_sha256(model), "method": "max", "batches": count})


def data_identity(spec: str) -> str:
    """What identifies a data source for the cache: the spec, plus the file, folder or module source it names."""
    return source_identity(spec)


def calibrate_cached(
    model: onnx.ModelProto,
    units: list[Unit],
    data: str,
    load: Callable[[], Iterable[object]],
    split: str,
    config: CalibrationConfig,
    cache_dir: Path | None,
    *,
    progress: bool = True,
) -> Ranges:
    """``calibrate`` behind a two-level cache; ``load`` is only called when neither level hits."""
    if cache_dir is None:
        return calibrate(model, units, load(), config, progress=progress)
    stats_key = _key(CACHE_FORMAT, model_sha256(model), data_identity(data), split, config.batches)
    ranges_path = cache_dir / f"ranges-{_key(stats_key, json.dumps(asdict(config), sort_keys=True))}.json"
    if ranges_path.is_file():
        LOG.info("calibration cache hit: %s", ranges_path)
        return Ranges.load(ranges_path)
    stats_path = cache_dir / f"histograms-{stats_key}.npz"
    channels_path = cache_dir / f"channels-{stats_key}.json"
    histograms = load_histograms(stats_path) if stats_path.is_file() else None
    channels = _load_channels(channels_path) if histograms is not None else None
    if histograms is None or channels is None:
        histograms, _, channels = _unit_statistics(model, units, load(), config.batches, progress)
        save_histograms(stats_path, histograms)
        atomic_write_text(channels_path, json.dumps({n: c.to_dict() for n, c in channels.items()}))
    else:
        LOG.info("reusing histograms %s", stats_path)
    ranges = calibrate(model, units, (), config, progress=progress, histograms=histograms, channels=channels)
    ranges = replace(ranges, meta={**ranges.meta, "data": data, "split": split})
    ranges.save(ranges_path)
    return ranges


def _key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:24]


def _load_channels(path: Path) -> dict[str, ChannelSummary] | None:
    """Channel statistics written beside the histograms, or None if missing or unreadable (then recomputed)."""
    try:
        return {name: ChannelSummary.from_dict(c) for name, c in json.loads(path.read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_histograms(path: Path, histograms: dict[str, TensorHistogram]) -> None:
    """Write histograms atomically as ``.npz`` (names in a JSON index, arrays by position)."""
    import io

    names = sorted(histograms)
    arrays = {
        "index": np.frombuffer(json.dumps(names).encode(), dtype=np.uint8),
        "counts": np.stack([histograms[n].counts for n in names]) if names else np.zeros((0, 1), np.int64),
        "exponents": np.array(
            [histograms[n].exponent if histograms[n].exponent is not None else -(10**6) for n in names]
        ),
        "minimum": np.array([histograms[n].minimum for n in names]),
        "maximum": np.array([histograms[n].maximum for n in names]),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_histograms(path: Path) -> dict[str, TensorHistogram] | None:
    """Histograms written by ``save_histograms``, or None if the file is unreadable (it is then recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = json.loads(archive["index"].tobytes().decode())
            result = {}
            for i, name in enumerate(names):
                exponent = int(archive["exponents"][i])
                result[name] = TensorHistogram(
                    archive["counts"][i].astype(np.int64),
                    None if exponent == -(10**6) else exponent,
                    float(archive["minimum"][i]),
                    float(archive["maximum"][i]),
                )
            return result
    except (OSError, ValueError, KeyError) as err:
        LOG.warning("ignoring unreadable histogram cache %s (%s)", path, err)
        return None


def _outputs(model: onnx.ModelProto, tensors: list[str]) -> list[onnx.ValueInfoProto]:
    """Graph outputs for ``tensors`` that ``model`` does not output yet (typed where shape inference knows them)."""
    inferred = {v.name: v for v in shape_view(model).graph.value_info}
    existing = {o.name for o in model.graph.output}
    return [inferred.get(name, onnx.ValueInfoProto(name=name)) for name in tensors if name not in existing]
