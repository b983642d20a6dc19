"""Images for the tiny detector: bright rectangles on noise, seeded per split (``load_data``)."""

import numpy as np

SEEDS = {"calibration": 0, "search": 1, "holdout": 2}


def load_data(split: str = "calibration", batches: str = "4"):
    rng = np.random.default_rng(SEEDS[split])
    for _ in range(int(batches)):
        images = rng.uniform(0, 0.3, (2, 3, 64, 64)).astype(np.float32)
        for image in images:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, 48, 2)
                image[rng.integers(3), y : y + rng.integers(8, 16), x : x + rng.integers(8, 16)] += 0.7
        yield {"images": images}
