"""The one build path: every compiled graph and every built artifact trtmix makes comes from a ``Builder``.

``compile``, ``build``, the measured orderings and the output writer all compile through it, and every artifact on
disk is named by a key that holds everything it depends on: the float model's hash, the ranges' hash (method,
settings and values), the plan, the flavour and its options, the backend's name, version and settings.  So a
changed calibration, model, flavour or backend setting can never be served an artifact built for another one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from trtmix.calibration.ranges import Ranges
from trtmix.errors import CompileError
from trtmix.io import atomic_write_text, file_sha256
from trtmix.ir.large import model_sha256, tensor_bytes
from trtmix.ir.store import damaged, save_shared
from trtmix.ir.units import Unit
from trtmix.quant.compile import compile_plan
from trtmix.quant.flavours import Flavour, get_flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.base import Backend

LOG = logging.getLogger(__name__)
FLOAT = "float"  # the plan key of the float model as exported, outside any flavour


@dataclass(frozen=True)
class BuildKey:
    """Everything a built artifact depends on; ``digest`` names it on disk."""

    model: str
    ranges: str
    plan: str
    flavour: dict[str, Any]
    backend: str
    backend_version: str
    backend_options: dict[str, Any]

    def digest(self) -> str:
        """A 20-hex-digit hash of the whole key."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Built:
    """A plan compiled (``onnx_path``) and built by the backend (``artifact``), under ``key``."""

    onnx_path: Path
    artifact: Path
    key: BuildKey


class Builder:
    """Compiles plans of one float model with one set of ranges in one flavour, and builds them with one backend."""

    def __init__(
        self,
        model: onnx.ModelProto,
        units: list[Unit],
        ranges: Ranges | None,
        flavour: str | Flavour,
        backend: Backend | None = None,
        folder: Path | None = None,
        model_hash: str | None = None,
        original: onnx.ModelProto | None = None,
    ) -> None:
        """``model_hash``: ``model``'s hash where the caller already has it (hashing BERT-large takes seconds).

        ``original``: the graph the user brought, where ``model`` was prepared from it (``trtmix.ir.fold``); the
        float build (plan None, the FP32 baseline) is then the user's graph as given.
        """
        self.model, self.units, self.ranges = model, units, ranges
        self.original = original
        self.flavour = get_flavour(flavour)
        self.flavour.check_model(model)
        if backend is not None:
            self.flavour.check_backend(backend.name)
        self.backend, self.folder = backend, folder
        self.model_hash = model_hash or model_sha256(model)
        self.model_bytes = tensor_bytes(model)  # what releasing memory after a probe is worth (``trtmix.memory``)
        self.ranges_hash = ranges.stable_hash() if ranges is not None else "none"  # fixed for this builder
        self._verified: set[Path] = set()  # artifacts whose hash was checked by this builder

    def compile(self, plan: PrecisionPlan, check: bool = True) -> onnx.ModelProto:
        """``plan`` written into the graph; with ``check``, refused unless it passes the flavour's rules."""
        compiled = compile_plan(self.model, plan, self.ranges, self.flavour, self.model_hash)
        if check:
            issues = self.flavour.issues(compiled, self.units, plan)
            if issues:
                raise CompileError(
                    f"The compiled graph breaks the {self.flavour.name} flavour's rules:\n  " + "\n  ".join(issues),
                    fix="this is a trtmix bug; please report it with the model and plan",
                )
        return compiled

    def key(self, plan: PrecisionPlan | None) -> BuildKey:
        """The key of ``plan`` (None: the float model) built by this builder's backend."""
        backend = self.require_backend()
        return BuildKey(
            model=self.model_hash,
            ranges=self.ranges_hash if plan is not None else "none",
            plan=plan.stable_hash() if plan is not None else FLOAT,
            flavour=self.flavour.options() if plan is not None else {},
            backend=backend.name,
            backend_version=backend.version,
            backend_options=backend.options(),
        )

    def paths(self, plan: PrecisionPlan | None) -> tuple[Path, Path]:
        """Where ``plan``'s compiled ONNX and its artifact live: named by the plan, the flavour and the key."""
        return self._paths(self.key(plan))

    def _paths(self, key: BuildKey) -> tuple[Path, Path]:
        if self.folder is None:
            raise CompileError("Internal error: this builder has no artifact folder.")
        flavour = self.flavour.name if key.plan != FLOAT else FLOAT
        stem = f"{key.plan}.{flavour}.{key.digest()}"
        suffix = "engine" if key.backend == "tensorrt" else "onnx"
        return self.folder / f"{stem}.onnx", self.folder / f"{stem}.{key.backend}.{suffix}"

    def build(self, plan: PrecisionPlan | None) -> Built:
        """Compile (checked) and build ``plan``, or the float model (None); reuses what is on disk.

        The float model is written into the artifact folder too, so a graph whose weights live in the user's
        external data file builds from the job's own copy.  Graphs keep their large weights in the folder's tensor
        store (``trtmix.ir.store``): what two probes share is written once.
        """
        key = self.key(plan)
        onnx_path, artifact = self._paths(key)
        fits = getattr(self.require_backend(), "fits", None)  # TensorRT: an engine is tied to its GPU and version
        if artifact.is_file() and artifact not in self._verified and fits is not None and not fits(artifact):
            LOG.warning("%s was built for another GPU or TensorRT version: rebuilding it here", artifact.name)
            artifact.unlink()
        if artifact.is_file() and not self._intact(artifact):
            LOG.warning("%s does not match the hash recorded when it was built (truncated or changed): rebuilding",
                        artifact.name)  # fmt: skip
            artifact.unlink()
        if not artifact.is_file():
            save_shared(self._float_copy() if plan is None else self.compile(plan), onnx_path)
            LOG.debug("building %s", artifact.name)
            self.require_backend().build(onnx_path, artifact)
            atomic_write_text(_hash_path(artifact), file_sha256(artifact))
            self._verified.add(artifact)
        return Built(onnx_path, artifact, key)

    def _float_copy(self) -> onnx.ModelProto:
        """A copy of the float model for the store to take its weights from (the builder's own is never changed)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(self.original if self.original is not None else self.model)
        return copy

    def _intact(self, artifact: Path) -> bool:
        """True when ``artifact`` still has the hash recorded at its build, and so has every store file it reads.

        Checked once per builder; a damaged store file is deleted, so the rebuild writes it again.
        """
        if artifact not in self._verified:
            recorded = _hash_path(artifact)
            if not recorded.is_file() or recorded.read_text().strip() != file_sha256(artifact):
                return False
            broken = damaged(artifact) if artifact.suffix == ".onnx" else []
            for file in broken:
                LOG.warning("store file %s is missing or damaged: rebuilding what reads it", file.name)
                file.unlink(missing_ok=True)
            if broken:
                return False
            self._verified.add(artifact)
        return True

    def require_backend(self) -> Backend:
        """The backend, which building (not compiling) needs."""
        if self.backend is None:
            raise CompileError("Internal error: this builder has no backend.")
        return self.backend


def _hash_path(artifact: Path) -> Path:
    """Where the hash of ``artifact`` is recorded when it is built."""
    return artifact.with_name(f"{artifact.name}.sha256")
