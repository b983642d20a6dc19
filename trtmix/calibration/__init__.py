"""Activation ranges: streaming histograms, range methods, the cache, TensorRT calibration-cache import."""
