"""The fastest attention for passes that need neither probabilities nor double backward.

The masked passes of the information term only need final hidden states, so they may leave
``heta_eager`` for a fused kernel: FlashAttention-2 on CUDA when the optional ``flash-attn``
package is installed and the model runs in half precision, PyTorch SDPA otherwise. The switch
goes through transformers' attention-implementation setting and is undone on exit. Nothing here
imports ``flash_attn``: its presence is checked by package metadata only, so CPU machines and
machines without it never load it.
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch import nn

FLASH = "flash_attention_2"
SDPA = "sdpa"


def flash_attn_installed() -> bool:
    """True if the ``flash_attn`` package can be found (it is not imported)."""
    return importlib.util.find_spec("flash_attn") is not None


def choose_no_grad_attention(model: nn.Module) -> str | None:
    """The implementation to use for no-grad passes, or None to keep the model's own.

    None for models whose attention cannot be switched at run time (e.g. GPT-J in older transformers releases, which picks
    its attention class when it is built).
    """
    can_switch = getattr(model, "_can_set_attn_implementation", None)
    if can_switch is None or not can_switch():
        return None
    param = next(model.parameters())
    if (param.is_cuda and param.dtype in (torch.float16, torch.bfloat16)
            and getattr(model, "_supports_flash_attn", False) and flash_attn_installed()):
        return FLASH
    if getattr(model, "_supports_sdpa", False):
        return SDPA
    return None


@contextlib.contextmanager
def no_grad_attention(model: nn.Module, implementation: str | None = "auto"):
    """Run the block with ``implementation`` ("auto": :func:`choose_no_grad_attention`; None: unchanged).

    Yields the implementation in force inside the block.
    """
    if implementation == "auto":
        implementation = choose_no_grad_attention(model)
    previous = model.config._attn_implementation
    if implementation is None or implementation == previous:
        yield previous
        return
    model.set_attn_implementation(implementation)
    try:
        yield implementation
    finally:
        model.set_attn_implementation(previous)
