"""Input validation and the final-logit transform shared by the vocabulary-KL implementations."""

from __future__ import annotations

import torch

from ..utils import check_positive, tanh_softcap

__all__ = ["check_logit_transform", "transform_logits", "validate_vocab_kl_inputs"]


def check_logit_transform(logit_scale: float = 1.0, softcap: float | None = None) -> None:
    """ValueError unless ``logit_scale`` is a finite number > 0 and ``softcap`` None or one."""
    check_positive("logit_scale", logit_scale, optional=False)
    check_positive("softcap", softcap)


def transform_logits(
    logits: torch.Tensor,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """The final-logit transform of the model, applied to ``logits`` z (any shape, e.g. [B, V]).

    z <- z * logit_scale (skipped when it is 1.0: Granite passes 1 / ``logits_scaling``,
    Cohere-style models their ``logit_scale``), then z <- c * tanh(z / c) when ``softcap`` = c
    is given (Gemma-2/3 ``final_logit_softcapping``).  With the defaults nothing runs and
    ``logits`` itself is returned.  Arithmetic in ``logits``' dtype; ``inplace`` overwrites it.
    """
    check_logit_transform(logit_scale, softcap)
    if logit_scale != 1.0:
        logits = logits.mul_(logit_scale) if inplace else logits * logit_scale
        inplace = True  # a fresh tensor from here on
    return tanh_softcap(logits, softcap, inplace=inplace)

_INDEX_DTYPES = (torch.int32, torch.int64)


def validate_vocab_kl_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[int, int, int, int]:
    """Check shapes, dtypes, devices and the logit transform; return ``(B, V, d, T)``.

    Expected shapes:
        hidden       [B, d]   floating point
        weight       [V, d]   floating point, V >= 1
        ref_logp     [T, V]   floating point (log-probabilities)
        target_index [B]      int32 / int64, values in [0, T)
        bias         [V] or None
        logit_scale  finite float > 0; softcap None or a finite float > 0

    Raises:
        ValueError: on any mismatch, with a message naming the offending tensor.
    """
    check_logit_transform(logit_scale, softcap)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [B, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, d], got shape {tuple(weight.shape)}")
    batch, dim = hidden.shape
    vocab, weight_dim = weight.shape
    if weight_dim != dim:
        raise ValueError(
            f"hidden size mismatch: hidden is [B, d] = {tuple(hidden.shape)} but "
            f"weight is [V, d] = {tuple(weight.shape)}"
        )
    if vocab < 1:
        raise ValueError("weight must have at least one vocabulary row (V >= 1)")
    if ref_logp.dim() != 2 or ref_logp.shape[1] != vocab:
        raise ValueError(
            f"ref_logp must be [T, V] with V = {vocab}, got shape {tuple(ref_logp.shape)}"
        )
    n_targets = ref_logp.shape[0]
    if target_index.dim() != 1 or target_index.shape[0] != batch:
        raise ValueError(
            f"target_index must be [B] with B = {batch}, got shape {tuple(target_index.shape)}"
        )
    if target_index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"target_index must be int32 or int64, got {target_index.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != vocab):
        raise ValueError(f"bias must be [V] with V = {vocab}, got shape {tuple(bias.shape)}")

    named = {"hidden": hidden, "weight": weight, "ref_logp": ref_logp}
    if bias is not None:
        named["bias"] = bias
    for name, tensor in named.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    named["target_index"] = target_index
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all tensors must be on the same device, got {devices}")

    if batch > 0:
        # Out-of-range targets would be an out-of-bounds read in the kernel, so
        # pay for the (tiny) reduction here.
        lo, hi = int(target_index.min()), int(target_index.max())
        if lo < 0 or hi >= n_targets:
            raise ValueError(
                f"target_index values must lie in [0, T={n_targets}), got range [{lo}, {hi}]"
            )
    return batch, vocab, dim, n_targets
