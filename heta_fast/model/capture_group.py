"""The capture pass of several requests at once: one forward pass of B right-padded sequences.

:func:`run_capture_group` gives, per sequence, the :class:`~.capture.Capture` that
:func:`~.capture.run_capture` gives for that sequence alone, to float rounding. No attention
mask is needed: every sequence keeps its own positions 0..n_b-1, and under causal attention
(sliding windows included) a row sees only earlier positions, so the padding after a sequence
changes none of its rows. transformers then builds its plain causal mask (or the windowed one),
and the recording attention runs the fused kernel with ``causal=True`` on the causal layers.
The recorder (:class:`~.attention.recording.GroupRecorder`) cuts every record to its
sequence's own length. A model whose rotary frequencies depend on the length of the pass
(longrope: heta_fast.model.rotary) would run a shorter sequence with the longest one's
frequencies: sequences whose lengths have different frequencies are refused as a group
(the engine then attributes them one at a time).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..dtypes import at_least_float32
from ..errors import UnsupportedArchitectureError
from .attention import RECORDING, attention_implementation
from .attention.pass_state import pass_state
from .attention.recording import GroupRecorder
from .capture import Capture, CaptureRequest, check_every_layer_ran, make_recorder
from .rotary import frequency_key


@torch.no_grad()
def run_capture_group(adapter, embeds: list[torch.Tensor], positions: list[torch.Tensor],
                      request: CaptureRequest) -> list[Capture]:
    """One forward pass of B sequences embeds[b] [n_b, d] (right-padded to the longest inside),
    with positions[b] [T_b] where sequence b wants log-probabilities -> per sequence its
    :class:`~.capture.Capture`: log_probs [T_b, V]; per layer q [H, n_b, dh], k [Hkv, n_b, dh],
    lse [H, n_b] and the values reduced from v [Hkv, n_b, dh]; kv [1, Hkv, n_b, dh] per layer."""
    lengths = _check_group(embeds, positions)
    _check_frequencies(adapter, lengths)
    device = embeds[0].device
    wanted = [p.to(device).long() for p in positions]
    recorder = make_recorder(adapter, request, GroupRecorder, lengths=lengths)
    cache = DynamicCache() if request.key_values else None
    with attention_implementation(adapter.model, RECORDING), pass_state(recorder):
        hidden = adapter.final_hidden(_right_pad(embeds), cache)  # [B, N, d], the LM head's input
    check_every_layer_ran(adapter, recorder)
    log_probs = _target_log_probs(adapter, hidden, wanted)
    n_layers = len(adapter.layers)
    return [
        Capture(
            log_probs=log_probs[b],
            layers=[recorder.groups[b][i] for i in range(n_layers)] if recorder.keeps else [],
            windows=list(recorder.windows),
            # Contiguous copies: a sequence's cache must not hold the whole batch's alive.
            kv=[(layer.keys[b : b + 1, :, :n].contiguous(), layer.values[b : b + 1, :, :n].contiguous())
                for layer in cache.layers] if cache is not None else None,
        )
        for b, n in enumerate(lengths)
    ]


def _check_group(embeds: list[torch.Tensor], positions: list[torch.Tensor]) -> list[int]:
    """The sequences' lengths [B]; refuses an empty group, an empty sequence, or a target
    position outside its own sequence (it would silently read another row or the padding)."""
    if not embeds or len(embeds) != len(positions):
        raise ValueError(f"a capture group needs one positions tensor per sequence and at least one sequence "
                         f"(got {len(embeds)} sequences, {len(positions)} positions)")
    lengths = [int(e.shape[0]) for e in embeds]
    for b, (n, p) in enumerate(zip(lengths, positions)):
        if n == 0:
            raise ValueError(f"sequence {b} of the capture group is empty")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= n):
            raise ValueError(f"sequence {b} has {n} tokens, its target positions reach {int(p.max())}")
    return lengths


def _check_frequencies(adapter, lengths: list[int]) -> None:
    """Refuse a group whose sequences' own passes would run with different rotary frequencies."""
    keys = {n: frequency_key(adapter.model, n) for n in sorted(set(lengths))}
    if len(set(keys.values())) > 1:
        raise UnsupportedArchitectureError(
            f"{adapter.spec.name}: sequences of {min(lengths)} and {max(lengths)} tokens cannot share a pass: the "
            f"model's rotary frequencies depend on the length of the pass (rope type longrope or dynamic)")


def _right_pad(embeds: list[torch.Tensor]) -> torch.Tensor:
    """embeds[b] [n_b, d] -> [B, N, d], each padded with copies of its own last row.

    Padding rows are never read by a real row (causality); copies rather than zeros keep the
    padding rows' norms (RMSNorm / LayerNorm of the padded hidden states) away from 0/0.
    """
    longest = max(e.shape[0] for e in embeds)
    return torch.stack([torch.cat([e, e[-1:].expand(longest - e.shape[0], -1)]) for e in embeds])


def _target_log_probs(adapter, hidden: torch.Tensor, wanted: list[torch.Tensor]) -> list[torch.Tensor]:
    """hidden [B, N, d], wanted[b] [T_b] -> per sequence log-probabilities [T_b, V] (float32 at least).

    The rows are gathered before the LM head rather than passing the model ``logits_to_keep``:
    that takes one index set for the whole batch, so the union of all positions would reach the
    head for every sequence (B x |union| rows of V logits instead of sum T_b). The head and the
    final-logit transform (scaling, soft-capping) are applied here as the model applies them.
    The head is called as the module itself, so that a bf16 precision stage keeps it in float32
    exactly as in a request's own capture (heta_fast/precision.py).
    """
    head, transform = adapter.model.get_output_embeddings(), adapter.logit_transform()
    rows = torch.cat([hidden[b, p] for b, p in enumerate(wanted)])  # [sum T_b, d]
    logits = transform(head(rows))
    return [torch.log_softmax(at_least_float32(part), dim=-1) for part in logits.split([p.numel() for p in wanted])]


__all__ = ["run_capture_group"]
