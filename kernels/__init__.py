"""Triton kernels for AsymCache: ``msa_triton``, multi-segment attention in one launch."""
