"""The output folder of one job: the float model (exported once per stamp), the artifact folder and the journal."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx

from trtmix.errors import TrtmixError
from trtmix.ir.fold import fold_batch_norms
from trtmix.ir.graph import load_onnx, save_onnx
from trtmix.ir.units import Unit, require_units
from trtmix.job import lock
from trtmix.search.journal import Journal

LOG = logging.getLogger(__name__)


class Workspace:
    """``output`` for the job on ``source``; ``fresh`` discards the journal, the artifacts and the export stamp.

    ``exporter`` and ``input_names`` export a torch source (``MODULE:FUNCTION``); an ONNX source is used as given.
    """

    def __init__(self, source: str, output: Path, exporter: str = "auto", input_names: tuple[str, ...] = (),
                 fresh: bool = False) -> None:  # fmt: skip
        self.source, self.output = source, output
        self.exporter, self.input_names = exporter, input_names
        if output.exists() and not output.is_dir():
            raise TrtmixError(f"The output folder {output} is a file, not a folder.",
                              fix="pass -o a new or existing folder")  # fmt: skip
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrtmixError(f"Cannot create the output folder {output}: {err.strerror}.",
                              fix="pass -o a folder you can write to") from err  # fmt: skip
        lock.acquire(output)  # one job per folder, before anything in it is touched
        self.artifacts = output / "artifacts"
        self.journal_path = output / "journal.sqlite"
        self.export_path = output / "model.onnx"
        try:
            if fresh:
                self.clear()
            self.artifacts.mkdir(exist_ok=True)
            self.original_path = self._float_model()
            self.original: onnx.ModelProto = load_onnx(self.original_path)
            self.model_path, self.model = self._prepared(self.original)
            self.units: list[Unit] = require_units(self.model, str(self.model_path))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the folder for the next job."""
        lock.release(self.output)

    def clear(self) -> None:
        """Forget every measurement and build of a previous run: journal, artifacts and the export stamp."""
        LOG.info("--fresh: discarding the journal, artifacts and export stamp in %s", self.output)
        self.journal_path.unlink(missing_ok=True)
        shutil.rmtree(self.artifacts, ignore_errors=True)
        self.export_path.with_suffix(".source").unlink(missing_ok=True)

    def _float_model(self) -> Path:
        """The float ONNX: the given file, or the torch factory exported into the output folder (once per stamp)."""
        if self.source.endswith(".onnx"):
            return Path(self.source)
        from trtmix.export import export_once

        names = list(self.input_names) or None
        return export_once(self.source, self.export_path, exporter=self.exporter, input_names=names)

    def _prepared(self, model: onnx.ModelProto) -> tuple[Path, onnx.ModelProto]:
        """The float model every plan starts from: the user's graph with what TensorRT folds folded in float32.

        Written as ``prepared.onnx`` when something folded; else the user's own file.  ``original_path`` stays the
        graph as given (or exported): the FP32 contender of the final choice.
        """
        folded, names = fold_batch_norms(model)
        if not names:
            return self.original_path, model
        return save_onnx(folded, self.output / "prepared.onnx"), folded

    def journal(self, identity: str) -> Journal:
        """The job's journal, refusing one written under another identity."""
        return Journal(self.journal_path, identity)
