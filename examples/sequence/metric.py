"""1 − character error rate against the FP32 model's transcripts, with greedy CTC decoding.

``one_minus_cer(candidate, reference, extras)`` is a trtmix metric (``--metric examples/sequence/metric.py:
one_minus_cer``): each sample's logits are decoded greedily (arg-max per position, repeats merged, blanks dropped),
and the edit distance to the FP32 transcript is summed over the split and divided by the FP32 transcripts' length,
as CER is defined (split-level, not a mean of per-sample rates).
"""

import numpy as np

BLANK = 0


def decode(logits: np.ndarray) -> list[int]:
    best = logits.argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != BLANK and (i == 0 or c != best[i - 1])]


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def one_minus_cer(candidate: dict, reference: dict, extras: dict) -> float:
    ours, theirs = candidate["logits"], reference["logits"]
    if "ids" in extras and len(extras["ids"]) < len(theirs):
        raise ValueError(f"{len(extras['ids'])} ids for {len(theirs)} samples")
    errors = sum(edit_distance(decode(a), decode(b)) for a, b in zip(ours, theirs, strict=True))
    characters = sum(len(decode(b)) for b in theirs)
    return 1.0 - errors / max(characters, 1)
