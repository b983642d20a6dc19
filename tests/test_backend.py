import json

import numpy as np
import pytest

from trtmix.errors import BackendError, BackendUnavailableError
from trtmix.evaluate import (
    cosine,
    fidelity,
    mean_kl,
    nearest_neighbour_agreement,
    nearest_neighbours,
    top1_accuracy,
    top1_agreement,
)
from trtmix.runtime import get_backend
from trtmix.runtime.base import LatencyStats

from .conftest import batches_for, run_ort


def test_latency_stats_summary():
    stats = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0, 10.0], warmup=2, threads=1, provider="p", device="d")
    assert stats.median_ms == 3.0 and stats.min_ms == 1.0 and stats.runs == 5
    assert stats.mean_ms == pytest.approx(4.0)
    assert stats.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert json.loads(json.dumps(stats.to_dict()))["median_ms"] == 3.0


def test_onnxruntime_build_run_time(exported, tmp_path):
    backend = get_backend("onnxruntime", threads=1)
    model_path = exported[("convnet", "dynamo")]
    artifact = backend.build(model_path, tmp_path / "built.onnx")
    feed = batches_for("convnet", 1, seed=2)[0]
    import onnx

    np.testing.assert_allclose(backend.run(artifact, feed)[0], run_ort(onnx.load(str(model_path)), feed), atol=1e-5)
    stats = backend.time(artifact, feed, runs=5, warmup=1)
    assert stats.runs == 5 and stats.warmup == 1 and stats.threads == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.versions["onnxruntime"]
    with pytest.raises(BackendError, match="at least 1"):
        backend.time(artifact, feed, runs=0)


def test_unknown_backend():
    with pytest.raises(BackendUnavailableError, match="Unknown backend"):
        get_backend("tensorflow")


def test_metrics_on_known_values():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]])
    assert top1_accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert top1_agreement(logits, logits[[0, 1, 1]]) == pytest.approx(2 / 3)
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-9)
    assert mean_kl(logits, logits * 2) > 0
    assert cosine(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]))[0] == pytest.approx(0.0)
    result = fidelity(logits + 0.01, logits)
    assert result.top1_agreement == 1.0 and result.cosine_min > 0.99 and result.max_abs_diff == pytest.approx(0.01)


def test_nearest_neighbour_agreement():
    # Three clusters of two (a, b, c); each row's neighbour is its cluster mate.
    reference = np.array([[1, 0, 0], [0.95, 0.05, 0], [0, 1, 0], [0, 0.95, 0.05], [0, 0, 1], [0.05, 0, 0.95]])
    assert nearest_neighbours(reference).tolist() == [1, 0, 3, 2, 5, 4]
    assert nearest_neighbour_agreement(reference * 3.0, reference) == 1.0  # scale does not change cosine
    moved = reference.copy()
    moved[3] = [0.9, 0.1, 0]  # b2 lands in cluster a: it now points at a2, while b1 still points at it
    assert nearest_neighbours(moved).tolist() == [1, 0, 3, 1, 5, 4]
    assert nearest_neighbour_agreement(moved, reference) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="two equal sets"):
        nearest_neighbour_agreement(reference[:1], reference[:1])
