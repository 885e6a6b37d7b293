"""Stub of the `vllm` package so SGLang's generic rotary-embedding path imports on a CPU host.

Without SGLANG_USE_CPU_ENGINE and without a GPU, `RotaryEmbedding.__init__` imports
`vllm._custom_ops.rotary_embedding` as a fallback kernel but then runs `forward_native`.
Only that one name is provided; every other `vllm` import in SGLang is guarded by ImportError.
"""
