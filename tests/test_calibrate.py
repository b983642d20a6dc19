import numpy as np
import pytest

from trtmix.calibrate import calibrate_max, tensors_to_calibrate
from trtmix.data import check_feed, checked_batches, load_batches, model_input_specs
from trtmix.errors import CalibrationError
from trtmix.graph import load_onnx
from trtmix.ranges import Ranges
from trtmix.units import find_units

from .conftest import batches_for


def test_max_ranges_equal_numpy_min_max(exported):
    model = load_onnx(exported[("convnet", "dynamo")])
    batches = batches_for("convnet", 3, seed=5)
    ranges = calibrate_max(model, batches, ["input", "relu"], progress=False)
    stacked = np.concatenate([b["input"] for b in batches])
    assert ranges.tensors["input"].min == pytest.approx(float(stacked.min()))
    assert ranges.tensors["input"].max == pytest.approx(float(stacked.max()))
    assert ranges.tensors["relu"].min == 0.0 and ranges.tensors["relu"].max > 0
    assert ranges.meta["batches"] == 3 and len(ranges.meta["model_sha256"]) == 64


def test_tensors_to_calibrate_cover_units_and_adds(exported):
    model = load_onnx(exported[("convnet", "dynamo")])
    units = find_units(model)
    names = set(tensors_to_calibrate(model, units))
    assert {t for u in units for t in (*u.inputs, u.output)} <= names
    assert "getitem_6" in names  # the residual Add's conv-branch input


def test_ranges_round_trip(tmp_path, calibrated):
    _, ranges = calibrated["convnet"]
    ranges.save(tmp_path / "r.json")
    loaded = Ranges.load(tmp_path / "r.json")
    assert loaded.tensors == ranges.tensors and loaded.meta == ranges.meta
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(CalibrationError, match="not a trtmix ranges file"):
        Ranges.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"x": np.zeros((2, 3, 16, 16), np.float32)}, r"Batch 0 has inputs \['x'\]"),
        ({"input": np.zeros((2, 3, 16, 16), np.float64)}, "dtype float64"),
        ({"input": np.zeros((2, 3, 8, 16), np.float32)}, r"shape \(2, 3, 8, 16\)"),
        ({"input": np.full((2, 3, 16, 16), np.nan, np.float32)}, "NaN or Inf"),
        ([1, 2, 3], "Batch 0 is a list"),
    ],
)
def test_bad_feeds_name_the_batch(exported, feed, message):
    specs = model_input_specs(load_onnx(exported[("convnet", "dynamo")]))
    with pytest.raises(CalibrationError, match=message):
        check_feed(feed, specs, 0)


def test_empty_and_failing_recipes(exported, tmp_path):
    model = load_onnx(exported[("convnet", "dynamo")])
    with pytest.raises(CalibrationError, match="yielded no batches"):
        list(checked_batches(iter([]), model))
    recipe = tmp_path / "recipe.py"
    recipe.write_text("def load_data():\n    raise RuntimeError('disk on fire')\n")
    with pytest.raises(CalibrationError, match="disk on fire"):
        load_batches(str(recipe))
    split_recipe = tmp_path / "split_recipe.py"
    split_recipe.write_text(
        "import numpy as np\n"
        "def load_data(split='calibration'):\n"
        "    seed = ['calibration', 'search', 'holdout'].index(split)\n"
        "    yield {'input': np.full((2, 3, 16, 16), seed, np.float32)}\n"
    )
    holdout = list(load_batches(f"{split_recipe}:load_data", split="holdout"))
    assert holdout[0]["input"][0, 0, 0, 0] == 2


def test_npz_batches(exported, tmp_path):
    model = load_onnx(exported[("convnet", "dynamo")])
    np.savez(tmp_path / "data.npz", input=np.ones((5, 3, 16, 16), np.float32))
    batches = list(load_batches(str(tmp_path / "data.npz"), batch_size=2))
    assert [b["input"].shape[0] for b in batches] == [2, 2, 1]
    with pytest.raises(CalibrationError, match=r"shape \(1, 3, 16, 16\)"):
        list(checked_batches(batches, model))  # the model has a static batch of 2
