"""Accuracy metrics: against labels, and fidelity against the float model's own outputs.

Fidelity needs no labels, which is what most calibration sets lack: top-1 agreement and KL for classifiers, cosine
similarity for embedding models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from trtmix import registry


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).mean())


def top1_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the float model's arg-max."""
    return float((np.asarray(logits).argmax(axis=-1) == np.asarray(reference_logits).argmax(axis=-1)).mean())


def mean_kl(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Mean KL(reference ‖ candidate) of the softmax distributions, in nats."""
    p = _softmax(np.asarray(reference_logits, dtype=np.float64))
    q = _softmax(np.asarray(logits, dtype=np.float64))
    return float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(axis=-1).mean())


def cosine(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (rows = all axes but the last flattened together)."""
    a = np.asarray(outputs, dtype=np.float64).reshape(-1, np.shape(outputs)[-1])
    b = np.asarray(reference, dtype=np.float64).reshape(-1, np.shape(reference)[-1])
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def sample_cosine(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity over the whole output (all axes but the first flattened together).

    The fidelity for dense outputs (probability maps, depth, images): a map's rows are mostly near zero, and the
    cosine of two near-zero rows is noise (a text detector's FP32 map scored 0.06 against itself by rows).
    An empty map (no text in the image, no object) is near zero, and so is noise; each sample is compared with one
    more component equal to a thousandth of the split's median reference norm, so two empty maps agree (→ 1), and a
    map where the reference is empty is still penalised.
    """
    a = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    floor = 1e-3 * float(np.median(np.linalg.norm(b, axis=-1))) + 1e-30
    norms = np.sqrt((a * a).sum(-1) + floor**2) * np.sqrt((b * b).sum(-1) + floor**2)
    return ((a * b).sum(-1) + floor**2) / norms


PSNR_CAP_DB = 100.0  # identical outputs: a finite score, so budgets relative to it stay defined
IOU_THRESHOLD = 0.5


def psnr(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean per-sample PSNR in dB, the peak being the largest |value| of the reference split (capped at 100 dB)."""
    a, b = _rows(outputs), _rows(reference)
    peak = float(np.abs(b).max()) or 1.0
    mse = ((a - b) ** 2).mean(axis=-1)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(peak**2 / mse)
    return float(np.minimum(db, PSNR_CAP_DB).mean())


def normalised_mse_score(outputs: np.ndarray, reference: np.ndarray) -> float:
    """1 − MSE / variance of the reference split: 1 for identical outputs, 0 for predicting the mean (R²)."""
    a, b = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    variance = float(b.var()) or 1e-30
    return float(1.0 - ((a - b) ** 2).mean() / variance)


def sequence_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Arg-max agreement per position of a [batch, positions, classes] output (CTC, token classes, ASR)."""
    if np.ndim(reference) < 3:
        raise ValueError(f"the sequence metric needs [batch, positions, classes] outputs (got {np.shape(reference)})")
    return top1_agreement(outputs, reference)


def map_iou(outputs: np.ndarray, reference: np.ndarray, threshold: float = IOU_THRESHOLD) -> float:
    """Mean per-sample IoU of the maps thresholded at ``threshold`` (two empty maps agree: 1)."""
    a, b = _rows(outputs) > threshold, _rows(reference) > threshold
    union = (a | b).sum(axis=-1)
    inter = (a & b).sum(axis=-1)
    return float(np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean())


def _rows(values: np.ndarray) -> np.ndarray:
    """One row per sample: every axis but the first flattened."""
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)


def by_name(names: tuple[str, ...], batches: list[list[np.ndarray]]) -> dict[str, object]:
    """Each output's batches concatenated along axis 0, or the list of batches when their shapes differ."""
    result: dict[str, object] = {}
    for position, name in enumerate(names):
        arrays = [outputs[position] for outputs in batches]
        same = len({array.shape[1:] for array in arrays}) == 1
        result[name] = np.concatenate(arrays) if same else arrays
    return result


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """For each row, the index of the most cosine-similar other row."""
    rows = np.asarray(embeddings, dtype=np.float64)
    rows = rows / (np.linalg.norm(rows, axis=-1, keepdims=True) + 1e-12)
    similarity = rows @ rows.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=-1)


def nearest_neighbour_agreement(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose nearest neighbour (cosine, among the other rows) is the float model's.

    Retrieval cares about this rather than cosine to the float embedding: a uniform error leaves rankings intact,
    a small one that lands between two close sentences swaps them.
    """
    if len(embeddings) != len(reference) or len(reference) < 2:
        raise ValueError(f"need two equal sets of at least 2 rows (got {len(embeddings)} and {len(reference)})")
    return float((nearest_neighbours(embeddings) == nearest_neighbours(reference)).mean())


@dataclass(frozen=True)
class Fidelity:
    """How closely a quantized model's outputs follow the float model's."""

    top1_agreement: float
    mean_kl: float
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return asdict(self)


def fidelity(outputs: np.ndarray, reference: np.ndarray) -> Fidelity:
    """Every fidelity metric of ``outputs`` against the float model's ``reference`` outputs."""
    cos = cosine(outputs, reference)
    return Fidelity(
        top1_agreement=top1_agreement(outputs, reference),
        mean_kl=mean_kl(outputs, reference),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        max_abs_diff=float(np.abs(np.asarray(outputs, np.float64) - reference).max()),
    )


METRICS = tuple(registry.METRICS)
EMBEDDING_WORDS = ("embed", "pool", "hidden", "feature", "sentence", "vector")
CLASS_WORDS = ("logit", "prob", "class", "score", "label")
MAX_CLASSES = 1000  # a 2-D output this narrow, with no name saying otherwise, is taken for class logits


def choose_metric(reference: np.ndarray, name: str = "") -> tuple[str, str]:
    """The built-in metric that fits a float output, and why: what ``--metric auto`` picks.

    From the output's rank and values (rows that sum to 1 are probabilities), and its name where the shape cannot
    tell class logits from an embedding.  The summary prints the choice and the reason; ``--metric`` overrides it.
    """
    values = np.asarray(reference)
    shape, lowered = "×".join(str(d) for d in values.shape[1:]) or "scalar", name.lower()
    if values.ndim >= 4:
        return "sample-cosine", f"a dense map per sample ({shape}): per-sample cosine over the whole output"
    if values.ndim <= 1 or values.shape[-1] == 1:
        return "mse", f"one value per sample ({shape}): 1 − MSE / variance"
    probabilities = bool((values >= 0).all() and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))
    if values.ndim == 3:
        if probabilities:
            return "sequence", f"a distribution per position ({shape}): arg-max agreement per position"
        return "cosine", f"a vector per position ({shape}, not probabilities): cosine per position"
    if any(word in lowered for word in EMBEDDING_WORDS) and not probabilities:
        return "cosine", f"an embedding per sample ({shape}; the output is named {name!r}): cosine"
    if probabilities or any(word in lowered for word in CLASS_WORDS) or values.shape[-1] <= MAX_CLASSES:
        narrow = values.shape[-1] <= MAX_CLASSES
        why = "rows sum to 1" if probabilities else f"at most {MAX_CLASSES} columns" if narrow else f"named {name!r}"
        return "agreement", f"class scores per sample ({shape}; {why}): top-1 agreement"
    return "cosine", f"a wide vector per sample ({shape}): cosine"
BUILT_IN = {"psnr": psnr, "mse": normalised_mse_score, "sequence": sequence_agreement, "iou": map_iou}


def score(metric: str, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The search metric (higher is better) of ``outputs``; ``reference`` is the float model's outputs.

    ``agreement``: top-1 agreement with the float model; ``accuracy``: top-1 against ``labels``; ``cosine``: mean
    cosine similarity to the float outputs (embedding models).
    """
    if metric == "agreement":
        return top1_agreement(outputs, reference)
    if metric == "accuracy":
        if labels is None:
            raise ValueError("the accuracy metric needs labels")
        return top1_accuracy(outputs, labels)
    if metric == "cosine":
        return float(cosine(outputs, reference).mean())
    if metric == "sample-cosine":
        return float(sample_cosine(outputs, reference).mean())
    if metric in BUILT_IN:
        return BUILT_IN[metric](outputs, reference)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def divergence(metric: str, outputs: np.ndarray, reference: np.ndarray) -> float:
    """A continuous distance to the float outputs matching ``metric`` (orderings rank units by it).

    KL of the softmax for class outputs (``agreement``, ``accuracy``, ``sequence``), 1 − cosine for embeddings and
    maps (``cosine``, ``sample-cosine``, and ``iou``, whose thresholded maps move in steps), 1 − the normalised-MSE
    score for ``mse`` and ``psnr``.
    """
    if metric == "cosine":
        return float(1.0 - cosine(outputs, reference).mean())
    if metric in ("sample-cosine", "iou"):
        return float(1.0 - sample_cosine(outputs, reference).mean())
    if metric in ("mse", "psnr"):
        return float(1.0 - normalised_mse_score(outputs, reference))
    return mean_kl(outputs, reference)
