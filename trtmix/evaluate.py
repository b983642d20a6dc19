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
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def divergence(metric: str, outputs: np.ndarray, reference: np.ndarray) -> float:
    """A continuous distance to the float outputs matching ``metric``: KL for classifiers, 1 − cosine otherwise."""
    if metric == "cosine":
        return float(1.0 - cosine(outputs, reference).mean())
    if metric == "sample-cosine":
        return float(1.0 - sample_cosine(outputs, reference).mean())
    return mean_kl(outputs, reference)
