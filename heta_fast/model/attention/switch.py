"""Which attention implementation a pass runs, and the switch between them.

- ``heta_eager`` (eager.py): probabilities and double backward; the model's implementation
  while heta-fast holds it (the curvature term differentiates twice through it).
- ``heta_recording`` (recording.py): the capture pass, fused and recorded.
- ``heta_packed`` (packed.py): the information term's packed masked passes.
- no-grad passes that need only hidden states (the information term's unmasked and
  rectangular passes): FlashAttention-2 on CUDA when the optional ``flash-attn`` package is
  installed and the model runs in half precision, PyTorch SDPA otherwise.

Every switch goes through transformers' attention-implementation setting and is undone on exit.
Nothing here imports ``flash_attn``: its presence is checked by package metadata only.
"""
from __future__ import annotations

import contextlib
import importlib.util

from torch import nn

from ...dtypes import HALF
from . import eager, packed, recording

FLASH = "flash_attention_2"
SDPA = "sdpa"
EAGER, RECORDING, PACKED = eager.NAME, recording.NAME, packed.NAME
_registered = False


def register() -> None:
    """Register heta's three attention functions (and the eager mask where they need one) once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(EAGER, eager.heta_eager_attention)
    AttentionMaskInterface.register(EAGER, eager_mask)
    AttentionInterface.register(RECORDING, recording.recording_attention)
    AttentionMaskInterface.register(RECORDING, eager_mask)
    # No mask function for the packed attention: transformers builds no mask for it, the
    # segments decide their own visibility.
    AttentionInterface.register(PACKED, packed.packed_attention)
    _registered = True


def flash_attn_installed() -> bool:
    """True if the ``flash_attn`` package can be found (it is not imported)."""
    return importlib.util.find_spec("flash_attn") is not None


def can_switch(model: nn.Module) -> bool:
    """Whether the model's attention implementation can be changed at run time."""
    check = getattr(model, "_can_set_attn_implementation", None)
    return check is not None and bool(check())


def choose_no_grad_attention(model: nn.Module) -> str | None:
    """The implementation to use for no-grad passes, or None to keep the model's own.

    A model with attention logit soft-capping keeps its own (heta's eager attention caps;
    SDPA cannot).
    """
    if not can_switch(model) or _soft_capped(model):
        return None
    param = next(model.parameters())
    if (param.is_cuda and param.dtype in HALF
            and getattr(model, "_supports_flash_attn", False) and flash_attn_installed()):
        return FLASH
    if getattr(model, "_supports_sdpa", False):
        return SDPA
    return None


def _soft_capped(model: nn.Module) -> bool:
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(config, "attn_logit_softcapping", None))


@contextlib.contextmanager
def attention_implementation(model: nn.Module, implementation: str | None = "auto"):
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
