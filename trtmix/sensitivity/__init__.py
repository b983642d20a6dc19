"""Sensitivity of each unit to INT8: Hessian traces in PyTorch, inter-layer augmentation, and measured baselines."""
