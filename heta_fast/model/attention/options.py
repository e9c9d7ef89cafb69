"""The attention options heta's attention functions implement, and refusal of every other one.

transformers hands an attention function the module, q, k, v, the mask, ``scaling``,
``dropout`` and whatever else the module passes as keywords. An option that changes the
attention (logit soft-capping, attention sinks ``s_aux``, ...) and is not implemented must stop
the run with a clear error, never be dropped: this module is that check.
"""
from __future__ import annotations

import torch

from ...errors import UnsupportedArchitectureError

# Keywords that carry no attention semantics of their own: bookkeeping of the call, or what the
# mask heta receives already applies (the sliding window; the recording and packed attention check it
# against the map's, check_window).
# (transformers' TransformersKwargs: the output_* flags and position ids; the packing keywords
# cu_seq_lens_* / max_length_* / seq_idx do change the attention and are refused when given.)
_NO_SEMANTICS = frozenset({
    "position_ids", "cache_position", "use_cache", "output_attentions", "output_hidden_states",
    "output_router_logits", "return_dict", "num_items_in_batch", "past_key_values", "cache", "layer_idx",
    "is_causal", "sliding_window", "position_embeddings",
})


def check_options(module, implementation: str, kwargs: dict) -> float | None:
    """The soft-cap c (or None) of this call; raises for any keyword heta cannot honour.

    A keyword outside the known ones is accepted only when its value is None or False (the
    module passes it but does not use it). Non-causal attention (``is_causal=False`` as a
    keyword or on the module) is refused: heta's attention functions are causal.
    """
    if kwargs.get("is_causal", True) is False or getattr(module, "is_causal", True) is False:
        _refuse(module, implementation, "is_causal", False)  # bidirectional attention: not a causal LM
    for name, value in kwargs.items():
        if name == "softcap" or value is None or value is False:
            continue
        if name not in _NO_SEMANTICS:
            _refuse(module, implementation, name, value)
    softcap = kwargs.get("softcap")
    return None if softcap is None or softcap == 0 else float(softcap)


def check_window(module, layer: int, passed, declared: int | None) -> None:
    """Refuse a layer whose attention module passes a sliding window (``passed``; None or 0: none)
    other than the one the architecture's module map declares (``declared``; None: none).

    heta's recording and packed attention, the flow gate and the information term's packed
    passes apply the map's window, not the module's; a window the model does not apply (a stray
    ``sliding_window`` in a config the family ignores, a wrong registered map) or one the map
    leaves out would silently give wrong numbers, even when it is longer than the pass.
    """
    passed = int(passed) if passed else None
    if passed != declared:
        applies = "no sliding window" if passed is None else f"a sliding window of {passed}"
        says = "none" if declared is None else str(declared)
        raise UnsupportedArchitectureError(
            f"layer {layer}: the attention module ({type(module).__name__}) applies {applies}, the "
            f"architecture's module map declares {says}; describe the window the module passes as the "
            f"map's window (heta_fast.model.ArchitectureSpec)")


def _refuse(module, implementation: str, name: str, value) -> None:
    shown = f"tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    raise UnsupportedArchitectureError(
        f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) passes the attention option "
        f"{name}={shown}, which heta-fast's {implementation} attention does not implement; running without it "
        f"would give wrong numbers")


def soft_cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Attention logit soft-capping s -> c·tanh(s/c) (Gemma-2), applied to scaled scores before
    the mask; identity when ``softcap`` is None."""
    if softcap is None:
        return scores
    return softcap * torch.tanh(scores / softcap)
