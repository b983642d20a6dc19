import numpy as np
import onnx
import pytest
import torch

from trtmix.data.user_code import load_model_factory
from trtmix.errors import ExportError, ModelLoadError
from trtmix.export import export_onnx
from trtmix.ir.units import MODULE_KEY
from trtmix.models import tiny

from .conftest import run_ort


@pytest.mark.parametrize("name", ["convnet", "transformer"])
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_matches_torch(exported, name, exporter):
    model, samples = getattr(tiny, name)()
    onnx_model = onnx.load(str(exported[(name, exporter)]))
    expected = model(*samples).detach().numpy()
    actual = run_ort(onnx_model, {"input": samples[0].numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_export_report_and_module_map(tmp_path):
    model, samples = tiny.convnet()
    report = export_onnx(model, samples, tmp_path / "m.onnx", exporter="dynamo")
    assert report.exporter == "dynamo" and report.opset == 19
    assert report.max_abs_diff < 1e-5
    onnx_model = onnx.load(str(report.path))
    modules = {n.name: {p.key: p.value for p in n.metadata_props}.get(MODULE_KEY) for n in onnx_model.graph.node}
    # BatchNorm is folded into the conv by dynamo; the conv still maps to the conv module, not the BatchNorm.
    assert modules["/stem/Conv"] == "stem"
    assert modules["/down/Conv"] == "down"
    assert modules["/fc/Gemm"] == "fc"
    assert report.module_map["/block_conv2/Conv"] == "block_conv2"


def test_dynamic_batch_axis(tmp_path):
    model, samples = tiny.convnet(batch=2)
    report = export_onnx(
        model, samples, tmp_path / "m.onnx", dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}
    )
    onnx_model = onnx.load(str(report.path))
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    bigger = torch.randn(5, 3, 16, 16)
    np.testing.assert_allclose(
        run_ort(onnx_model, {"input": bigger.numpy()}), model(bigger).detach().numpy(), atol=1e-5
    )


class Unexportable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.sort(x.detach().numpy()))  # leaves torch: no exporter can trace this


def test_export_failure_is_a_clear_error(tmp_path):
    # dynamo refuses it; legacy bakes the numpy result in as a constant and drops the input: both are caught.
    with pytest.raises(ExportError, match="has no graph input 'x'"):  # named after forward(self, x)
        export_onnx(Unexportable(), (torch.randn(3),), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(ExportError, match="torch.onnx.export failed: dynamo"):
        export_onnx(Unexportable(), (torch.randn(3),), tmp_path / "bad.onnx", exporter="dynamo")
    with pytest.raises(ExportError, match="needs opset"):
        export_onnx(Unexportable(), (torch.randn(3),), tmp_path / "bad.onnx", opset=17)


def test_factory_loading_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="names no function"):
        load_model_factory("trtmix.models.tiny")
    with pytest.raises(ModelLoadError, match="Cannot import module"):
        load_model_factory("no_such_module_xyz:build")
    with pytest.raises(ModelLoadError, match="has no function 'nope'"):
        load_model_factory("trtmix.models.tiny:nope")
    script = tmp_path / "factory.py"
    script.write_text("def build():\n    return 42\n")
    with pytest.raises(ModelLoadError, match="Expected: a tuple"):
        load_model_factory(f"{script}:build")
    assert load_model_factory("trtmix.models.tiny:convnet")[1][0].shape == (2, 3, 16, 16)
    script.write_text("import torch\ndef build():\n    return torch.nn.Linear(2, 3), torch.zeros(1, 2)\n")
    model, samples = load_model_factory(f"{script}:build")  # a bare tensor becomes a 1-tuple of sample inputs
    assert isinstance(model, torch.nn.Linear) and len(samples) == 1 and samples[0].shape == (1, 2)
