"""What a job ships for its chosen plan, and the holdout check that scores it on data the search never saw.

Every ONNX file written here is compiled anew and checked by its flavour's rules before it is written: the file a
user ships is never one the rules have not seen.  Every file loads on its own, wherever the folder is moved: a built
artifact that is an ONNX graph refers to the job's tensor store, so its copy takes its weights inside (``ship_copy``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import onnx

from trtmix.io import atomic_write_text
from trtmix.ir.domains import foreign_ops
from trtmix.ir.graph import save_onnx
from trtmix.job.driver import SearchDriver
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.trtexec import fp32_compute, trtexec_lines

# What a job leaves at the top of its output folder: name pattern → what it is.  README's list of the output folder
# is rendered from this (``output_list``), and tests/test_compile_job.py checks every file a job writes is here.
OUTPUT_FILES = {
    "plan.json": "the chosen plan, each unit's precision (all FP32 when the graph you brought is shipped)",
    "chosen.<flavour>.onnx": "the chosen plan written into the graph, in the job's flavour",
    "chosen.<flavour>.<backend>.onnx": "what the backend built from it, its weights inside",
    "chosen.<flavour>.tensorrt.engine": "with a real TensorRT: the engine",
    "chosen.tensorrt.onnx": "the chosen plan in the tensorrt flavour, for TensorRT on the target GPU",
    "trtexec.txt": "the trtexec lines (TensorRT 10 and 11) that build `chosen.tensorrt.onnx`",
    "chosen.original.onnx": "instead of the four above, when no plan beat it: the graph you brought, unchanged",
    "chosen.original.<backend>.<suffix>": "and what the backend built from it",
    "report.json": "every probe, baseline, ordering, the final timing, the engine check and the holdout check",
    "report.html": "one self-contained page: frontier plot, probe table, the chosen plan unit by unit",
    "frontier.png": "latency against accuracy of every probe",
    "ranges.json": "the activation ranges every build of the job used",
    "ranges.rounding.npz": "where learned weight rounding was kept: the int8 weights `ranges.json` names",
    "model.onnx": "a torch source, exported (`model.source` stamps what it was exported from)",
    "model.source": "the export's stamp: a changed factory, exporter, opset or input names exports again",
    "given.onnx": "an in-memory source (`trtmix.compile` with a torch module or a ModelProto), written once",
    "prepared.onnx": "when BatchNormalizations were folded: the float graph every plan starts from",
    "<name>.onnx.data": "the weights of any graph above here over protobuf's 2 GiB limit",
    "journal.sqlite": "every probe measured, committed as it is measured: a rerun resumes from it",
    "timing.<device>.cache": "with a real TensorRT: its timing cache for this GPU and TensorRT, shared by every build",
    "artifacts/": "every probe's compiled graph and artifact, their weights in the shared `artifacts/tensors/` store",
    ".trtmix.lock": "held while a job writes to the folder (one job per folder)",
}


def output_list() -> str:
    """README's list of the output folder (between its ``output-files`` markers), from ``OUTPUT_FILES``."""
    return "\n".join(f"- `{name}`: {text};" for name, text in OUTPUT_FILES.items()).rstrip(";") + "."


def unlisted_outputs(output: Path) -> list[str]:
    """The entries at the top of a job's ``output`` folder that ``OUTPUT_FILES`` does not describe."""
    rules = [_pattern(name) for name in OUTPUT_FILES]
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in output.iterdir()]
    return [name for name in names if not any(rule.match(name) for rule in rules)]


def _pattern(name: str) -> re.Pattern[str]:
    """``chosen.<flavour>.onnx`` as a regular expression: each ``<placeholder>`` stands for a part of a file name."""
    parts = re.split(r"(<[a-z]+>)", name)
    return re.compile("".join("[^/]+" if part.startswith("<") else re.escape(part) for part in parts) + r"\Z")


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
