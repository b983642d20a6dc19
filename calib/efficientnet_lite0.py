"""Calibration recipe for EfficientNet-Lite0: random resized crops and flips of the photos shipped in
scikit-image and scikit-learn, RGB 224², (x − 127) / 128; each split uses its own photos.

    trtmix calibrate efficientnet.onnx --data calib/efficientnet_lite0.py --method percentile -o ranges.json
"""

from trtmix.models import efficientnet


def load_data(split="calibration", batch=8, batches=32):
    yield from efficientnet.load_data(split, batch=int(batch), batches=int(batches))
