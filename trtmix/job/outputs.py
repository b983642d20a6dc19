"""What a job ships for its chosen plan, and the holdout check that scores it on data the search never saw.

Every ONNX file written here is compiled anew and checked by its flavour's rules before it is written: the file a
user ships is never one the rules have not seen.  Every file loads on its own, wherever the folder is moved: a built
artifact that is an ONNX graph refers to the job's tensor store, so its copy takes its weights inside (``ship_copy``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx

from trtmix.io import atomic_write_text
from trtmix.ir.domains import foreign_ops
from trtmix.ir.graph import save_onnx
from trtmix.job.driver import SearchDriver
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.build import Builder
from trtmix.runtime.trtexec import fp32_compute, trtexec_lines


def holdout_check(driver: SearchDriver, plan: PrecisionPlan, baseline: dict[str, Any]) -> dict[str, float]:
    """The chosen plan on the holdout split, which the search never saw, beside its search-split figure."""
    artifact = driver.builder.build(plan).artifact
    value = driver.evaluation.score("holdout", driver.outputs(artifact, "holdout"))
    return {"accuracy": value, "relative": value / baseline["holdout"] if baseline["holdout"] else float("nan")}


def write_plan_outputs(
    output: Path, builder: Builder, plan: PrecisionPlan, tensorrt: dict[str, object] | None = None
) -> dict[str, str]:
    """Write the chosen plan's files into ``output``.

    They are plan.json, the ONNX in the search flavour and in the tensorrt flavour, the built artifact, and the
    equivalent trtexec commands for TensorRT 10 and 11 with the job's TensorRT settings (``tensorrt``).
    """
    plan.save(output / "plan.json")
    flavour, backend = builder.flavour.name, builder.require_backend().name
    built = builder.build(plan)
    chosen = {"plan": "plan.json", "onnx": f"chosen.{flavour}.onnx",
              "artifact": f"chosen.{flavour}.{backend}{built.artifact.suffix}"}  # fmt: skip
    save_onnx(builder.compile(plan, check=True), output / chosen["onnx"])
    ship_copy(built.artifact, output / chosen["artifact"])
    tensorrt_onnx = output / "chosen.tensorrt.onnx"
    foreign = foreign_ops(builder.model)
    if foreign:  # TensorRT cannot parse the graph at all: no tensorrt-flavour file, and the report says why
        chosen["tensorrt_note"] = f"no chosen.tensorrt.onnx: TensorRT cannot parse {foreign[0].domain} ops"
        return chosen
    if flavour != "tensorrt":
        shipped = Builder(builder.model, builder.units, builder.ranges, "tensorrt", model_hash=builder.model_hash)
        save_onnx(shipped.compile(plan, check=True), tensorrt_onnx)
    line = _write_trtexec(output, tensorrt_onnx.name, tensorrt)
    return {**chosen, "tensorrt_onnx": tensorrt_onnx.name, "trtexec": line}


def ship_copy(artifact: Path, target: Path) -> Path:
    """A copy of a built artifact that loads without the job's folder.

    An engine file is copied as it is.  An ONNX artifact (OpenVINO's, ONNX Runtime's optimised graph) keeps its
    weights in ``artifacts/tensors/``, named relative to ``artifacts/``: copied as it is, ONNX Runtime and OpenVINO
    refuse it ("External data path validation failed"), so its weights are read in and written with it.
    """
    if artifact.suffix != ".onnx":
        shutil.copyfile(artifact, target)
        return target
    return save_onnx(onnx.load(str(artifact)), target)


def _write_trtexec(output: Path, onnx_name: str, tensorrt: dict[str, object] | None) -> str:
    """``trtexec.txt``: the TensorRT 10 and 11 lines that build ``onnx_name``; returns the TensorRT 10 line."""
    fp32 = bool(fp32_compute(output / onnx_name))  # TF32 off where a conv or matmul is planned FP32
    lines = trtexec_lines(onnx_name, "chosen.engine", "timing.cache", tensorrt or {}, fp32_layers=fp32)
    atomic_write_text(output / "trtexec.txt", lines)
    return lines.splitlines()[1]


def write_original_outputs(
    output: Path, original: onnx.ModelProto, artifact: Path, backend: str, tensorrt: dict[str, object] | None = None
) -> dict[str, str]:
    """When no plan beat the user's own graph: that graph, unchanged, is what the job ships.

    plan.json says FP32 everywhere; ``chosen.original.onnx`` is the graph as given (its weights inside, or beside
    it when over 2 GiB), the built artifact beside it, and trtexec lines that build it (FP32 is valid strongly typed).
    """
    from trtmix.job.final import ORIGINAL_PLAN

    ORIGINAL_PLAN.save(output / "plan.json")
    chosen = {"plan": "plan.json", "onnx": "chosen.original.onnx",
              "artifact": f"chosen.original.{backend}{artifact.suffix}"}  # fmt: skip
    save_onnx(original, output / chosen["onnx"])
    ship_copy(artifact, output / chosen["artifact"])
    foreign = foreign_ops(original)
    if foreign:
        chosen["tensorrt_note"] = f"no trtexec line: TensorRT cannot parse {foreign[0].domain} ops"
        return chosen
    return {**chosen, "trtexec": _write_trtexec(output, chosen["onnx"], tensorrt)}
