"""What each benchmark model's accuracy means beyond the search metric, measured on data the search never saw.

Every check takes ``run``: a function from one feed to the model's first output, so the float model, a trtmix plan
and ONNX Runtime's ``quantize_static`` model are measured by the same code.

* MiniLM-L6: cosine to the FP32 embeddings and nearest-neighbour agreement on holdout ``pydoc_data`` sentences,
  and the accuracy of a word-polarity probe (logistic regression trained on FP32 embeddings of VADER's train words)
  on VADER's test words.
* EfficientNet-Lite0: top-1 agreement and KL against FP32 on holdout crops, and the chelsea / coffee sanity labels.
* digits ResNet: test accuracy on every full batch of the holdout split (real labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from trtmix.evaluate import cosine, mean_kl, nearest_neighbour_agreement, top1_accuracy, top1_agreement

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


class Quality(Protocol):
    """A model's extra accuracy checks: ``prepare`` once with the float model, then ``measure`` any model."""

    columns: tuple[str, ...]

    def prepare(self, run_float: Run) -> None: ...

    def measure(self, run: Run) -> dict[str, float]: ...


def _outputs(run: Run, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([run(feed) for feed in feeds])


class MiniLMQuality:
    """Sentence fidelity and retrieval on holdout text; word polarity on VADER's human labels."""

    columns = ("cosine", "NN agree", "polarity")

    def __init__(self, sentence_batches: int = 32, test_words: int = 1024) -> None:
        from trtmix.models import minilm

        self.sentences = list(minilm.load_data("holdout", batches=sentence_batches))
        words, labels = minilm.polarity_words("test")
        usable = (min(test_words, len(words)) // 8) * 8  # the export takes batches of exactly 8
        self.words = [minilm.tokenize(words[i : i + 8], 128) for i in range(0, usable, 8)]
        self.word_labels = labels[:usable]

    def prepare(self, run_float: Run) -> None:
        """FP32 references, and the probe trained on FP32 embeddings of the train words."""
        self.reference = _outputs(run_float, self.sentences)
        self.probe = _train_probe()

    def measure(self, run: Run) -> dict[str, float]:
        embeddings = _outputs(run, self.sentences)
        predicted = self.probe.predict(_normalise(_outputs(run, self.words)))
        return {
            "cosine": float(cosine(embeddings, self.reference).mean()),
            "NN agree": nearest_neighbour_agreement(embeddings, self.reference),
            "polarity": float((predicted == self.word_labels).mean()),
        }


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)


def _train_probe():  # type: ignore[no-untyped-def]
    """Logistic regression on FP32 torch embeddings of VADER's train words (padded only to the longest word)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from trtmix.models import minilm

    model, _ = minilm.minilm()
    words, labels = minilm.polarity_words("train")
    embeddings = []
    with torch.no_grad():
        for start in range(0, len(words), 256):
            encoded = minilm.tokenizer()(words[start : start + 256], padding=True, return_tensors="pt")
            embeddings.append(model(encoded["input_ids"], encoded["attention_mask"]).numpy())
    return LogisticRegression(max_iter=2000).fit(_normalise(np.concatenate(embeddings)), labels)


class EfficientNetQuality:
    """Top-1 agreement and KL on holdout crops; the two whole photos whose ImageNet class is known."""

    columns = ("agree", "KL", "sanity")

    def __init__(self, crop_batches: int = 32) -> None:
        from trtmix.models import efficientnet

        self.crops = list(efficientnet.load_data("holdout", batches=crop_batches))
        sanity, self.expected = efficientnet.sanity_data()
        images = sanity["input"]
        self.sanity = {"input": np.resize(images, (8, *images.shape[1:]))}  # repeat to the export's batch of 8

    def prepare(self, run_float: Run) -> None:
        self.reference = _outputs(run_float, self.crops)

    def measure(self, run: Run) -> dict[str, float]:
        logits = _outputs(run, self.crops)
        top1 = run(self.sanity).argmax(axis=-1)
        correct = sum(int(top1[i]) in classes for i, classes in enumerate(self.expected.values()))
        return {
            "agree": top1_agreement(logits, self.reference),
            "KL": mean_kl(logits, self.reference),
            "sanity": correct / len(self.expected),
        }


class DigitsQuality:
    """Accuracy on the real labels of the whole holdout split (full batches)."""

    columns = ("test acc",)

    def __init__(self) -> None:
        from trtmix.models import digits

        self.batches = list(digits.load_data("holdout"))
        self.labels = digits.load_labels("holdout")[: 32 * len(self.batches)]

    def prepare(self, run_float: Run) -> None:
        return None

    def measure(self, run: Run) -> dict[str, float]:
        return {"test acc": top1_accuracy(_outputs(run, self.batches), self.labels)}


class NoQuality:
    """Random weights: nothing to measure beyond latency."""

    columns: tuple[str, ...] = ()

    def prepare(self, run_float: Run) -> None:
        return None

    def measure(self, run: Run) -> dict[str, float]:
        return {}
