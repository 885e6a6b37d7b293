"""The one `vllm._custom_ops` name SGLang 0.5.16 imports on the CPU path."""

import torch


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    # SGLang imports this at model build time but dispatches to forward_native on the CPU.
    raise NotImplementedError(
        "vllm stub: rotary_embedding has no CPU kernel; SGLang should use "
        "RotaryEmbedding.forward_native on the CPU path"
    )
