"""Triton kernels for AsymCache (the multi-segment attention kernel lands with the GPU issue)."""
