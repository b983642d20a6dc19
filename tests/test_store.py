"""The tensor store: the graphs of one job share their weights on disk, and a damaged store file is never served."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from trtmix.ir.store import STORE, references
from trtmix.ir.units import find_units
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime import get_backend
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

from .conftest import batches_for


def _store_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in (folder / STORE).glob("*.bin"))


@pytest.mark.parametrize("flavour,backend", [("tensorrt", "openvino"), ("ort-cpu", "onnxruntime")])
def test_probes_share_weights_and_write_only_what_they_change(
    calibrated: dict, tmp_path: Path, flavour: str, backend: str
) -> None:
    model, ranges = calibrated["transformer"]
    units = find_units(model)
    builder = Builder(model, units, ranges, flavour, get_backend(backend, flavour=flavour), tmp_path)
    high = builder.build(PrecisionPlan())
    all_int8 = builder.build(PrecisionPlan.with_int8([u.name for u in units]))
    after_two = _store_bytes(tmp_path)
    half_plan = PrecisionPlan.with_int8([u.name for u in units[: len(units) // 2]])
    half = builder.build(half_plan)
    assert _store_bytes(tmp_path) == after_two, "a plan mixing two built plans adds no weight bytes"
    for built in (high, all_int8, half):
        for path in (built.onnx_path, built.artifact):  # the compiled graph, and what the engine built from it
            assert references(path), "large weights live in the store"
            assert path.stat().st_size < 64 * 1024, "the graph file holds no weights"
    feed = batches_for("transformer", 1, seed=2)[0]
    with builder.require_backend().open(half.artifact) as runner:
        from_store = runner.infer(feed)[0]
    assert np.isfinite(from_store).all()
    if backend == "onnxruntime":  # the optimised graph and its stored weights compute what ORT computes in memory
        with OnnxRuntimeRunner(builder.compile(half_plan), optimize=True) as runner:
            np.testing.assert_array_equal(from_store, runner.infer(feed)[0])


def test_a_damaged_store_file_is_rewritten_before_anything_reads_it(
    calibrated: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    plan = PrecisionPlan.with_int8([u.name for u in units])
    feed = batches_for("convnet", 1, seed=3)[0]
    first = Builder(model, units, ranges, "tensorrt", get_backend("openvino"), tmp_path).build(plan)
    with get_backend("openvino").open(first.artifact) as runner:
        expected = runner.infer(feed)[0]
    victim = max(references(first.artifact), key=lambda path: path.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, wrong content
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = Builder(model, units, ranges, "tensorrt", get_backend("openvino"), tmp_path).build(plan)
    assert "missing or damaged" in caplog.text and victim.is_file()
    with get_backend("openvino").open(again.artifact) as runner:
        np.testing.assert_array_equal(runner.infer(feed)[0], expected)


def test_a_new_plan_never_reuses_a_damaged_store_file(calibrated: dict, tmp_path: Path) -> None:
    """A store file zeroed in place (same size) that a *new* plan shares with a built one is written again."""
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    first_plan = PrecisionPlan.with_int8([u.name for u in units])
    new_plan = PrecisionPlan.with_int8([u.name for u in units[1:]])  # shares every int8 weight but the first unit's
    feed = batches_for("convnet", 1, seed=4)[0]
    builder = Builder(model, units, ranges, "tensorrt", get_backend("openvino"), tmp_path / "job")
    first = builder.build(first_plan)
    fresh = Builder(model, units, ranges, "tensorrt", get_backend("openvino"), tmp_path / "clean").build(new_plan)
    with get_backend("openvino").open(fresh.artifact) as runner:
        expected = runner.infer(feed)[0]
    shared = set(references(first.artifact)) & _planned_references(builder, new_plan)
    victim = max(shared, key=lambda path: path.stat().st_size)
    with victim.open("r+b") as stream:  # zeroed in place: same size, same inode
        stream.write(b"\0" * victim.stat().st_size)
    again = builder.build(new_plan)  # the same job goes on to a plan it has not built yet
    assert victim.read_bytes() != b"\0" * victim.stat().st_size, "the damaged store file was written again"
    with get_backend("openvino").open(again.artifact) as runner:
        np.testing.assert_array_equal(runner.infer(feed)[0], expected)


def _planned_references(builder: Builder, plan: PrecisionPlan) -> set[Path]:
    """The store files ``plan``'s compiled graph will refer to, named by hash (nothing written)."""
    from trtmix.ir.large import skeleton

    graph = skeleton(builder.compile(plan))
    onnx_path, _ = builder.paths(plan)
    return {onnx_path.parent / entry.value for tensor in graph.graph.initializer for entry in tensor.external_data
            if entry.key == "location"}  # fmt: skip
