"""``trtmix sensitivity``: export if needed, calibrate, compute, and cache by model + data + settings.

Every method scores one INT8 quantizer, the one ``compile`` would write with these ranges: the flavour's weight
levels (``--weight-bits``), ``--weights``, smoothing and bias correction.  Its smoothing is chosen as ``trtmix
build`` chooses it (none unless ``--smooth-alpha``): ``compile`` measures its options on the search split instead,
which this command does not, so the result says which quantizer it scored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trtmix.calibration.calibrate import CalibrationConfig, data_identity
from trtmix.calibration.collect import collect_ranges
from trtmix.data.recipe import Recipe
from trtmix.data.user_code import load_model_factory
from trtmix.io import atomic_write_text
from trtmix.ir.fold import load_float_model
from trtmix.ir.large import model_sha256
from trtmix.ir.units import require_units
from trtmix.parallel.cluster import Cluster, ParallelSettings
from trtmix.quant.flavours import get_flavour
from trtmix.quant.smooth import SmoothSettings, describe_quantizers, prepare_ranges
from trtmix.quant.weights import WeightQuantizer
from trtmix.sensitivity.run import TORCH_METHODS, SensitivitySettings, compute_sensitivity

NOT_MEASURED = ("chosen as `trtmix build` chooses them; `trtmix compile` measures its smoothing option on the search "
                "split and may choose another (its report's quantizers.smoothing.option): pass --smooth-alpha A to "
                "score its α=A option (compile's centred option has no flag here)")  # fmt: skip


def sensitivity_for(
    source: str,
    data: str,
    data_args: dict[str, str],
    settings: SensitivitySettings,
    calibration: CalibrationConfig,
    output: Path,
    *,
    input_names: list[str] | None = None,
    cache_dir: Path | None = None,
    parallel: ParallelSettings | None = None,
    smooth: SmoothSettings | None = None,
    bias_correction: bool = True,
    weight_bits: int | None = None,
) -> dict[str, Any]:
    """The sensitivity result for ``source`` (MODULE:FUNCTION or .onnx), written to ``output`` and cached.

    With ``parallel`` enabled, the measured scores (kl, B) are shared among Ray workers.  ``smooth``,
    ``bias_correction`` and ``weight_bits`` set the quantizer as they do for ``trtmix build``; the result's
    ``quantizers`` says which one was scored.
    """
    flavour = get_flavour(settings.flavour, weight_bits)
    smooth = smooth or SmoothSettings(enabled=False)  # as build: the expected-noise model is not trusted unmeasured
    smooth.validate()
    if source.endswith(".onnx"):
        model_path = Path(source)
    else:
        from trtmix.export import export_once

        model_path = export_once(source, output.with_suffix(".model.onnx"), input_names=input_names)
    model = load_float_model(model_path)
    units = require_units(model, str(model_path))
    calibrated = collect_ranges(model_path, data, "calibration", calibration, data_args=data_args, cache_dir=cache_dir)
    ranges, quantizers = prepare_ranges(model, units, calibrated, smooth, bias_correction, flavour)
    quantizers["summary"] = f"{describe_quantizers(quantizers)}, {NOT_MEASURED}"
    key_text = json.dumps(
        {"model": model_sha256(model), "data": data_identity(data), "args": data_args, "settings": asdict(settings),
         "calibration": asdict(calibration), "source_is_torch": not source.endswith(".onnx"),
         "quantizers": {"smooth": asdict(smooth), "bias_correction": bias_correction,
                        "weight_levels": flavour.weight_levels}},
        sort_keys=True,
    )  # fmt: skip
    cache_path = (
        cache_dir / f"sensitivity-{hashlib.sha256(key_text.encode()).hexdigest()[:24]}.json" if cache_dir else None
    )
    if cache_path is not None and cache_path.is_file():
        result = json.loads(cache_path.read_text())
    else:
        recipe = Recipe.of(data, data_args)
        feeds = recipe.batches(model, "calibration", settings.batches)
        torch_model = (
            load_model_factory(source)[0]
            if set(settings.methods) & TORCH_METHODS and not source.endswith(".onnx")
            else None
        )
        labels = _labels(recipe, feeds) if settings.metric == "accuracy" else None
        cluster = Cluster(parallel) if parallel is not None and parallel.enabled else None
        try:
            result = compute_sensitivity(model, units, ranges, feeds, settings, torch_model, labels, cluster=cluster,
                                         quantizer=WeightQuantizer(ranges, flavour))  # fmt: skip
        finally:
            if cluster is not None:
                cluster.close()
        result["model"] = source
        result["quantizers"] = quantizers
        if cache_path is not None:
            atomic_write_text(cache_path, json.dumps(result, indent=1) + "\n")
    atomic_write_text(output, json.dumps(result, indent=1) + "\n")
    return result


def _labels(recipe: Recipe, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray] | None:
    """Per-batch labels from the recipe's ``load_labels("calibration")``, or None without one (KL is used then)."""
    labels = recipe.labels("calibration")
    if labels is None:
        return None
    batches, start = [], 0
    for feed in feeds:
        rows = len(next(iter(feed.values())))
        batches.append(labels[start : start + rows])
        start += rows
    return batches
