"""Seeded random inputs for the ``trtmix.models.zoo`` graphs: token ids with a padded row, or images.

``--data-arg kind=image image=224 batch=1`` etc. set the shapes; the defaults fit the zoo's ``small`` size.
Random data is enough for what the zoo measures: fidelity of each plan to the model's own FP32 outputs.
"""

from collections.abc import Iterator

import numpy as np

SEEDS = {"calibration": 0, "search": 1, "holdout": 2}


def load_data(split: str = "calibration", kind: str = "text", batch: str = "2", sequence: str = "16",
              image: str = "32", vocab: str = "1000", batches: str = "4") -> Iterator[dict[str, np.ndarray]]:
    """``batches`` feeds of ``split``: ``input_ids`` + ``attention_mask`` (kind text) or ``pixel_values``."""
    rng = np.random.default_rng(SEEDS[split])
    rows, length, side = int(batch), int(sequence), int(image)
    for _ in range(int(batches)):
        if kind == "image":
            yield {"pixel_values": rng.standard_normal((rows, 3, side, side)).astype(np.float32)}
            continue
        mask = np.ones((rows, length), np.int64)
        mask[-1, length // 2:] = 0  # the last row is padded: the model's mask adds -inf there
        yield {"input_ids": rng.integers(0, int(vocab), (rows, length)).astype(np.int64), "attention_mask": mask}
