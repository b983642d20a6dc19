"""Text-line images for the tiny recognizer (stripes of varying widths), seeded; ``load_extras`` gives sample ids."""

import numpy as np

SEEDS = {"calibration": 0, "search": 1, "holdout": 2}
BATCHES, ROWS = 4, 2


def load_data(split: str = "calibration"):
    rng = np.random.default_rng(SEEDS[split])
    for _ in range(BATCHES):
        lines = rng.uniform(0, 0.2, (ROWS, 1, 16, 32)).astype(np.float32)
        for line in lines:
            for x in rng.choice(32, size=8, replace=False):
                line[0, :, x] += rng.uniform(0.5, 1.0)
        yield {"lines": lines}


def load_extras(split: str) -> dict:
    """What the metric gets besides the outputs: one id per sample, in load_data order."""
    return {"ids": np.arange(BATCHES * ROWS) + 1000 * SEEDS[split]}
