"""The data a job scores plans on: the search and holdout feeds, the float model's outputs on them, the labels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix.data.recipe import Recipe
from trtmix.data.recipes import is_in_memory
from trtmix.data.user_metric import UserMetric, is_user_metric, load_user_metric
from trtmix.errors import TrtmixError
from trtmix.evaluate import by_name, choose_metric, score
from trtmix.runtime.base import Backend, Runner
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
    metric_note: str | None = None  # with --metric auto: which metric was chosen, and why
    metric_seconds: list[float] = field(default_factory=list)  # each evaluation's cost: it runs on every probe
    user_metric: UserMetric | None = None  # --metric FILE.py:FUNCTION: scores every output, with the extras
    output_names: tuple[str, ...] = ()
    reference_all: dict[str, dict[str, Any]] = field(default_factory=dict)  # split → every FP32 output by name
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # split → the recipe's load_extras(split)
    ordering_metric: str = ""  # the built-in whose divergence ranks units (the metric itself, if built in)

    def score(self, split: str, outputs: Any) -> float:
        """The metric of ``outputs`` on ``split`` (its time is kept: the report shows the metric's cost).

        ``outputs`` is what ``run`` returns: the scored output, or with a user metric every output by name.
        """
        start = time.perf_counter()
        if self.user_metric is not None:
            value = self.user_metric(outputs, self.reference_all[split], self.extras.get(split, {}))
        else:
            value = score(self.metric, outputs, self.reference[split], self.labels[split])
        self.metric_seconds.append(time.perf_counter() - start)
        return value

    def reference_score(self, split: str) -> float:
        """The FP32 model's own score on ``split`` (what budgets relative to FP32 divide by)."""
        return self.score(split, self.reference_all[split] if self.user_metric else self.reference[split])

    def run(self, runner: Runner, split: str) -> Any:
        """What ``score`` takes, from ``runner`` on every evaluated batch of ``split``."""
        batches = [runner.infer(feed) for feed in self.feeds[split]]
        if self.user_metric is not None:
            return by_name(self.output_names, batches)
        return np.concatenate([outputs[self.output_index] for outputs in batches])

    def outputs(self, backend: Backend, artifact: Path, split: str) -> Any:
        """``run`` on ``artifact`` (one runner for all batches)."""
        with backend.open(artifact) as runner:
            return self.run(runner, split)


def load_evaluation(
    recipe: Recipe,
    model: onnx.ModelProto,
    model_path: Path,
    metric: str,
    batches: int,
    score_output: str | None = None,
    threads: int | None = None,
) -> Evaluation:
    """Feeds of both splits (``batches`` each), the float model's outputs on them (ONNX Runtime, the oracle), labels.

    ``metric`` is a built-in name, ``auto`` (chosen from the scored output) or the user's ``FILE.py:FUNCTION``.
    """
    index, note = scored_output(model, score_output)
    feeds = {split: recipe.batches(model, split, batches) for split in SPLITS}
    with OnnxRuntimeRunner(model_path, threads, optimize=True) as oracle:
        raw = {split: [oracle.infer(feed) for feed in split_batches] for split, split_batches in feeds.items()}
    reference = {split: np.concatenate([outputs[index] for outputs in rows]) for split, rows in raw.items()}
    names = tuple(output.name for output in model.graph.output)
    user = load_user_metric(metric) if is_user_metric(metric) else None
    labels = {split: _labels(recipe, metric, split, len(reference[split])) for split in feeds}
    chosen, metric_note = metric, None
    if metric == "auto":
        chosen, why = choose_metric(reference["search"], names[index])
        metric_note = f"metric auto: {chosen}, for {why}"
    ordering_metric = choose_metric(reference["search"], names[index])[0] if user else chosen
    if user is None:
        _check_fit(chosen, reference["search"])
    evaluation = Evaluation(chosen, feeds, reference, labels, index, note, metric_note, user_metric=user,
                            output_names=names, ordering_metric=ordering_metric)  # fmt: skip
    if user is not None:
        evaluation.reference_all = {split: by_name(names, rows) for split, rows in raw.items()}
        evaluation.extras = {split: recipe.extras(split) for split in SPLITS}
        evaluation.metric_note = (f"metric {metric} (yours; the kl/gain orderings rank units by 1 - its "
                                  "score relative to FP32 on calibration batches)")  # fmt: skip
    return evaluation


def _check_fit(metric: str, reference: np.ndarray) -> None:
    """Refuse a built-in that cannot score this output, naming the one ``auto`` would pick."""
    rank = np.ndim(reference)
    problem = None
    if metric == "sequence" and rank < 3:
        problem = "sequence needs [batch, positions, classes] outputs"
    elif metric in ("agreement", "cosine", "sequence") and rank >= 4:
        problem = f"{metric} works along the last axis, which of a dense map is one image row"
    elif metric == "iou" and (float(np.min(reference)) < 0 or float(np.max(reference)) > 1):
        problem = "iou thresholds maps at 0.5, which fits probabilities in [0, 1], not these values"
    if problem is None:
        return
    suggestion, why = choose_metric(reference)
    raise TrtmixError(
        f"--metric {metric} does not fit the scored output of shape {np.shape(reference)}: {problem}.",
        fix=f"use --metric {suggestion} ({why}), --metric auto, or your own FILE.py:FUNCTION",
    )


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


def _labels(recipe: Recipe, metric: str, split: str, rows: int) -> np.ndarray | None:
    """Labels of the evaluated rows of ``split`` from the recipe's ``load_labels(split)`` (metric accuracy)."""
    if metric != "accuracy":
        return None
    if is_in_memory(recipe.spec):
        raise TrtmixError("--metric accuracy needs labels, and data given in memory has none.",
                          fix="use your own metric that reads labels, or a recipe with load_labels(split)")  # fmt: skip
    labels = recipe.labels(split)
    if labels is None:
        raise TrtmixError(
            "--metric accuracy needs labels, but the data recipe has no load_labels(split) function.",
            fix="add load_labels(split) returning the labels in load_data order, or use --metric agreement",
        )
    if len(labels) < rows:
        raise TrtmixError(f"load_labels({split!r}) returned {len(labels)} labels for {rows} evaluated samples.")
    return labels[:rows]
