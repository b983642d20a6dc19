"""Calibration recipe for models on scikit-learn's digits: (batch, 1, 16, 16) images scaled to [-1, 1].

trtmix calibrate digits.onnx --data calib/digits.py -o ranges.json
"""

from trtmix.models import digits


def load_data(split="calibration", batch=32):
    yield from digits.load_data(split, batch=int(batch))
