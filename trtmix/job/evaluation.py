"""The data a job scores plans on: the search and holdout feeds, the float model's outputs on them, the labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtmix.data.recipes import checked_batches, load_batches
from trtmix.data.user_code import USER_FIX, import_module_or_file, split_spec, user_error
from trtmix.errors import TrtmixError
from trtmix.evaluate import score
from trtmix.job.config import CompileConfig
from trtmix.runtime.base import Backend
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

Feed = dict[str, np.ndarray]
SPLITS = ("search", "holdout")
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.BFLOAT16})  # fmt: skip


@dataclass
class Evaluation:
    """The search and holdout feeds, the float model's outputs on them, labels, and the metric."""

    metric: str
    feeds: dict[str, list[Feed]]
    reference: dict[str, np.ndarray]
    labels: dict[str, np.ndarray | None]
    output_index: int = 0  # which graph output the metric scores
    output_note: str | None = None  # said in the summary when the model has several outputs

    def score(self, split: str, outputs: np.ndarray) -> float:
        """The metric of ``outputs`` on ``split``."""
        return score(self.metric, outputs, self.reference[split], self.labels[split])

    def outputs(self, backend: Backend, artifact: Path, split: str) -> np.ndarray:
        """The scored output of ``artifact`` on every evaluated batch of ``split`` (one runner for all batches)."""
        with backend.open(artifact) as runner:
            return np.concatenate([runner.infer(feed)[self.output_index] for feed in self.feeds[split]])


def split_feeds(config: CompileConfig, model: onnx.ModelProto, split: str, limit: int) -> list[Feed]:
    """At most ``limit`` checked batches of ``split`` from the job's data."""
    batches = load_batches(config.data, split, **dict(config.data_args))
    return list(checked_batches(batches, model, limit=limit, split=split))


def load_evaluation(config: CompileConfig, model: onnx.ModelProto, model_path: Path) -> Evaluation:
    """Feeds of both splits, the float model's outputs on them (ONNX Runtime, the oracle) and labels."""
    index, note = scored_output(model, config.score_output)
    feeds = {split: split_feeds(config, model, split, config.eval_batches) for split in SPLITS}
    with OnnxRuntimeRunner(model_path, config.threads, optimize=True) as oracle:
        reference = {s: np.concatenate([oracle.infer(f)[index] for f in batches]) for s, batches in feeds.items()}
    labels = {split: _labels(config, split, len(reference[split])) for split in feeds}
    return Evaluation(config.metric, feeds, reference, labels, index, note)


def scored_output(model: onnx.ModelProto, name: str | None) -> tuple[int, str | None]:
    """The index of the graph output the metric scores, and the line the summary says about it.

    One output: that one, nothing to say. Several: ``name`` (``--score-output``), else the first, and the summary
    names it, so a user scoring BERT's ``pooler_output`` by accident sees it.
    """
    names = [output.name for output in model.graph.output]
    if name is not None and name not in names:
        raise TrtmixError(
            f"--score-output {name!r}: the model has no output of that name.",
            expected=f"one of: {', '.join(names)}",
            fix="pass one of the model's output names",
        )
    index = names.index(name) if name is not None else 0
    elem_type = model.graph.output[index].type.tensor_type.elem_type
    if elem_type not in FLOAT_TYPES:
        dtype = onnx.TensorProto.DataType.Name(elem_type).lower()
        raise TrtmixError(
            f"The scored output {names[index]!r} is {dtype}, not float: the metrics compare float outputs "
            "(logits or embeddings) with the float model's.",
            fix="pass --score-output NAME naming a float output, or export the model without its argmax",
        )
    if len(names) == 1:
        return 0, None
    how = "chosen with --score-output" if name is not None else "the first; --score-output NAME chooses another"
    return index, f"scored output: {names[index]} ({how}; the model has {len(names)}: {', '.join(names)})"


def _labels(config: CompileConfig, split: str, rows: int) -> np.ndarray | None:
    """Labels of the evaluated rows of ``split`` from the recipe's ``load_labels(split)`` (metric accuracy)."""
    if config.metric != "accuracy":
        return None
    module_name, _ = split_spec(config.data, default_function="load_data")
    labels_function = (
        None if config.data.endswith(".npz") else getattr(import_module_or_file(module_name), "load_labels", None)
    )
    if labels_function is None:
        raise TrtmixError(
            "--metric accuracy needs labels, but the data recipe has no load_labels(split) function.",
            fix="add load_labels(split) returning the labels in load_data order, or use --metric agreement",
        )
    try:
        labels = np.asarray(labels_function(split=split))
    except TrtmixError:
        raise
    except Exception as err:
        raise TrtmixError(user_error(err, f"load_labels({split!r}) of {module_name}"), fix=USER_FIX) from err
    if len(labels) < rows:
        raise TrtmixError(f"load_labels({split!r}) returned {len(labels)} labels for {rows} evaluated samples.")
    return labels[:rows]
