"""The engine's single forward pass, and what it leaves for the signals.

Each signal declares what it needs from the pass as a :class:`CaptureRequest`; the engine
merges the requests and runs one :func:`run_capture`. The pass runs the recording attention
(:mod:`heta_fast.model.attention.recording`): fused kernels, no attention matrix, and per layer
only what was asked for. The target positions' next-token log-probabilities are always captured.
Several requests in one pass: :func:`~.capture_group.run_capture_group` (same Capture per sequence).

:func:`capture_matrices` is the materialised counterpart (attention probabilities [H, n, n],
values and per-head output projections) for the oracle and for checks of the module maps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from transformers import DynamicCache

from ..dtypes import at_least_float32
from ..errors import UnsupportedArchitectureError
from .attention import RECORDING, attention_implementation
from .attention.pass_state import pass_state
from .attention.recording import AttentionRecord, AttentionRecorder
from .cache_kwargs import cache_kwargs


@dataclass(frozen=True)
class CaptureRequest:
    """What a signal needs from the forward pass, beyond the targets' log-probabilities.

    attention:     per layer the post-rotary q [H, n, dh], k [Hkv, n, dh], the row log-sum-exp
                   [H, n] and the score scale (enough to recompute any attention row)
    reduce_values: per layer, a function (layer, values [Hkv, n, dh]) -> tensor applied to the
                   layer's values as soon as they exist; its result is kept, the values are not
    key_values:    per layer the keys and values [1, Hkv, n, dh] of the pass (a KV cache)
    """

    attention: bool = False
    reduce_values: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    key_values: bool = False

    def merge(self, other: "CaptureRequest") -> "CaptureRequest":
        """What both requests need (one value reduction at most: two would keep two copies)."""
        if self.reduce_values is not None and other.reduce_values is not None \
                and self.reduce_values is not other.reduce_values:
            raise ValueError("two signals asked for different reductions of the values")
        return CaptureRequest(attention=self.attention or other.attention,
                              reduce_values=self.reduce_values or other.reduce_values,
                              key_values=self.key_values or other.key_values)

    @classmethod
    def union(cls, requests) -> "CaptureRequest":
        merged = cls()
        for request in requests:
            merged = merged.merge(request)
        return merged


@dataclass
class Capture:
    """What the single forward pass of n tokens leaves behind (no attention matrices).

    log_probs: [T, V] next-token log-probabilities at the target positions (float32 at least)
    layers:    per layer (bottom first) an :class:`AttentionRecord` with what was asked for;
               empty when neither attention nor values were asked for
    windows:   per layer the sliding-attention window (None: plain causal)
    kv:        per layer (keys, values) [1, Hkv, n, dh] if asked for, else None
    """

    log_probs: torch.Tensor
    layers: list[AttentionRecord]
    windows: list[int | None]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def release(self, still_needed: CaptureRequest) -> None:
        """Drop what no remaining signal needs (frees memory between signals)."""
        if not still_needed.attention and still_needed.reduce_values is None:
            self.layers = []
        elif not still_needed.attention:
            self.layers = [replace(rec, q=None, k=None, lse=None) for rec in self.layers]
        elif still_needed.reduce_values is None:
            self.layers = [replace(rec, values=None) for rec in self.layers]
        if not still_needed.key_values:
            self.kv = None


@torch.no_grad()
def run_capture(adapter, embeds: torch.Tensor, positions: torch.Tensor, request: CaptureRequest) -> Capture:
    """One forward pass of embeds [n, d]; positions [T] are where log-probabilities are wanted
    (only those rows reach the LM head). See :class:`Capture`."""
    recorder = make_recorder(adapter, request, AttentionRecorder)
    model = adapter.model
    cache = DynamicCache() if request.key_values else None
    with attention_implementation(model, RECORDING), pass_state(recorder):
        logits = model(inputs_embeds=embeds[None], logits_to_keep=positions.to(embeds.device),
                       **cache_kwargs(model, cache)).logits[0]
    check_every_layer_ran(adapter, recorder)
    return Capture(
        log_probs=torch.log_softmax(at_least_float32(logits), dim=-1),
        layers=[recorder.records[i] for i in range(len(adapter.layers))] if recorder.keeps else [],
        windows=recorder.windows,
        kv=[(layer.keys, layer.values) for layer in cache.layers] if cache is not None else None,
    )


def make_recorder(adapter, request: CaptureRequest, kind: type[AttentionRecorder], **options) -> AttentionRecorder:
    """A recorder of ``kind`` for ``adapter``'s attention modules, keeping what ``request`` asks for."""
    layer_of = {id(adapter.spec.attention(layer)): i for i, layer in enumerate(adapter.layers)}
    windows = [adapter.window(i) for i in range(len(adapter.layers))]
    return kind(layer_of, attention=request.attention, reduce_values=request.reduce_values, windows=windows,
                **options)


def check_every_layer_ran(adapter, recorder: AttentionRecorder) -> None:
    """Refuse a pass in which some layer's attention bypassed the recording attention."""
    missing = [i for i in range(len(adapter.layers)) if i not in recorder.seen]
    if missing:
        raise UnsupportedArchitectureError(
            f"{adapter.spec.name}: the attention of layers {missing} did not run through transformers' attention "
            f"interface, so heta-fast cannot record it; this transformers release computes that attention in "
            f"the model's own code")


@dataclass
class MatrixCapture:
    """A materialised forward pass of a single sequence of n tokens (oracle and checks only).

    log_probs:   [n, V]  next-token log-probabilities at every position
    attentions:  list over layers of [H, n, n] attention probabilities (row = query)
    values:      list over layers of [Hkv, n, dh] values of the normalised attention input
    out_proj:    list over layers of [H, dh, d_model] per-head output projections
    post_gain:   list over layers of the post-attention norm's gain [d_model], or None (no such norm)
    outputs:     list over layers of the attention module's output [n, d_model] (before any post-norm)
    """

    log_probs: torch.Tensor
    attentions: list[torch.Tensor]
    values: list[torch.Tensor]
    out_proj: list[torch.Tensor]
    post_gain: list[torch.Tensor | None]
    outputs: list[torch.Tensor]


@torch.no_grad()
def capture_matrices(adapter, embeds: torch.Tensor) -> MatrixCapture:
    """One eager forward pass of embeds [n, d] that keeps every attention matrix; see :class:`MatrixCapture`."""
    attn_inputs: dict[int, torch.Tensor] = {}
    attn_outputs: dict[int, torch.Tensor] = {}
    handles = []
    for idx, layer in enumerate(adapter.layers):
        def hook(module, args, kwargs, idx=idx):
            attn_inputs[idx] = args[0] if args else kwargs["hidden_states"]

        def out_hook(module, args, out, idx=idx):
            attn_outputs[idx] = (out[0] if isinstance(out, tuple) else out)[0]

        attn = adapter.spec.attention(layer)
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        handles.append(attn.register_forward_hook(out_hook))
    try:
        out = adapter.model(inputs_embeds=embeds[None], output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if out.attentions is None or len(out.attentions) != len(adapter.layers) \
            or any(a is None for a in out.attentions):
        raise UnsupportedArchitectureError(f"{adapter.spec.name}: the model did not return the attention "
                                           f"probabilities of every layer from heta's eager attention")
    values, out_proj = [], []
    for idx, layer in enumerate(adapter.layers):
        attn = adapter.spec.attention(layer)
        values.append(adapter.spec.values(attn, adapter.layout, attn_inputs[idx])[0].transpose(0, 1))
        out_proj.append(adapter.spec.out_proj(attn, adapter.layout))
    return MatrixCapture(
        log_probs=torch.log_softmax(at_least_float32(out.logits[0]), dim=-1),
        attentions=[a[0] for a in out.attentions],
        values=values,
        out_proj=out_proj,
        post_gain=[adapter.post_attention_gain(i) for i in range(len(adapter.layers))],
        outputs=[attn_outputs[i] for i in range(len(adapter.layers))],
    )


__all__ = ["Capture", "CaptureRequest", "MatrixCapture", "capture_matrices", "run_capture"]
