"""The model adapter: a loaded causal LM plus its architecture module map.

It turns token ids into input embeddings and runs the model *from embeddings*, because every
HETA signal perturbs or differentiates the input embeddings (positions are added inside the
model for absolute-position architectures, so masking a token never moves a position).

``capture`` runs one forward pass and records what the reference flow gate needs: per-layer
attention probabilities, the values of the normalised attention input (bias included) and the
per-head output projection. ``capture_stream`` is the engine's forward pass: fused attention,
no probabilities, and per layer only what the streaming flow gate needs to recompute them
(O(L·H·n·dh) memory instead of O(L·H·n²)).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from .attention import AttentionRecord, AttentionRecorder, recording
from .attention import register as register_attention
from .errors import UnsupportedArchitectureError
from .ops.value_norm import value_norm
from .adapters import ArchitectureSpec, HeadLayout, head_layout_from_config, spec_for_config


@dataclass
class ForwardCapture:
    """What one forward pass of a single sequence of n tokens leaves behind.

    log_probs:   [n, V]  next-token log-probabilities at every position
    attentions:  list over layers of [H, n, n] attention probabilities (row = query)
    values:      list over layers of [Hkv, n, dh] values of the normalised attention input
    out_proj:    list over layers of [H, dh, d_model] per-head output projections
    """

    log_probs: torch.Tensor
    attentions: list[torch.Tensor]
    values: list[torch.Tensor]
    out_proj: list[torch.Tensor]
    layout: HeadLayout


@dataclass
class StreamCapture:
    """What the engine's single forward pass of n tokens leaves behind (no attention matrices).

    log_probs: [T, V] next-token log-probabilities at the requested positions only
    layers:    list over layers (bottom first) of :class:`~heta_fast.attention.AttentionRecord`:
               post-rotary q [H, n, dh], k [Hkv, n, dh], lse [H, n], scale, and as ``values``
               the value norms vn[h, i] = ‖v_i W_O^h‖₁ [H, n] (reduced during the pass, so the
               values themselves are never kept)
    windows:   list over layers of the sliding-attention window (None: plain causal)
    kv:        if asked for, per layer the (keys, values) [1, Hkv, n, dh] of the pass (the unmasked
               prefix cache of the information term); else None
    """

    log_probs: torch.Tensor
    layers: list[AttentionRecord]
    windows: list[int | None]
    layout: HeadLayout
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class ModelAdapter:
    """A causal LM with its :class:`ArchitectureSpec`; the only place that calls the model."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec | None = None):
        self.model = model
        self.spec = spec or spec_for_config(model.config)
        self.layout = head_layout_from_config(model.config)
        self.layers = self.spec.layers(model)
        # Double backward (curvature) and returned attention weights (flow) both need an
        # eager attention path: fused SDPA/flash kernels have no double backward and do not
        # expose probabilities. Forced here, for every entry point (see heta_fast/attention.py).
        model.set_attn_implementation(register_attention())
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_length(self) -> int | None:
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions"):
            v = getattr(cfg, name, None)
            if v:
                return int(v)
        return None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n] -> input embeddings [n, d_model] (detached)."""
        emb = self.model.get_input_embeddings()
        return emb(ids.to(self.device)).detach()

    def logits(self, embeds: torch.Tensor, positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """embeds [B, n, d] -> logits [B, P, V] at ``positions`` (all n if None). Differentiable.

        cache: optional transformers Cache holding positions [0, a) (extended in place); embeds
        then sit at positions a..a+n-1 and ``positions`` index rows of embeds.
        """
        run = _cache_kwargs(self.model, cache)
        if positions is None:
            return self.model(inputs_embeds=embeds, **run).logits
        # Only the requested positions reach the LM head (a [n, V] logits block per sequence
        # would dominate the cost of short inputs with large vocabularies).
        keep = positions.to(embeds.device)
        return self.model(inputs_embeds=embeds, logits_to_keep=keep, **run).logits

    def log_probs(self, embeds: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, n, d] -> next-token log-probabilities [B, P, V] (float32 at least)."""
        logits = self.logits(embeds, positions)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def hidden_states(self, embeds: torch.Tensor, cache, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, L, d] continuing ``cache`` (a transformers Cache of positions [0, a), extended
        in place) -> final normalised hidden states [B, L, d] at positions a..a+L-1 (LM head input).

        position_ids [B, L] override those positions (packed masked variants, whose segments
        restart at their own positions: :mod:`heta_fast.signals.packed_variants`).
        """
        extra = {} if position_ids is None else {"position_ids": position_ids}
        base = self.model.base_model
        return base(inputs_embeds=embeds, **_cache_kwargs(base, cache), **extra).last_hidden_state

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head as (weight [V, d], bias [V] or None): logits = h W^T + b."""
        cfg = self.model.config
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            if getattr(cfg, name, None) not in (None, 1, 1.0):
                raise UnsupportedArchitectureError(f"{self.spec.name}: {name} transforms the logits; the fused "
                                                   f"vocabulary KL supports a plain linear LM head only")
        head = self.model.get_output_embeddings()
        return head.weight.detach(), None if head.bias is None else head.bias.detach()

    @torch.no_grad()
    def capture(self, embeds: torch.Tensor) -> ForwardCapture:
        """One forward pass of embeds [n, d]; see :class:`ForwardCapture`."""
        attn_inputs: dict[int, torch.Tensor] = {}
        handles = []
        for idx, layer in enumerate(self.layers):
            attn = self.spec.attention(layer)

            def hook(module, args, kwargs, idx=idx):
                x = args[0] if args else kwargs["hidden_states"]
                attn_inputs[idx] = x

            handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            out = self.model(inputs_embeds=embeds[None], output_attentions=True, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        if out.attentions is None or len(out.attentions) != len(self.layers):
            raise RuntimeError("the model did not return attention weights from the eager path")
        values, out_proj = [], []
        for idx, layer in enumerate(self.layers):
            attn = self.spec.attention(layer)
            values.append(self.spec.values(attn, self.layout, attn_inputs[idx])[0].transpose(0, 1))
            out_proj.append(self.spec.out_proj(attn, self.layout))
        logits = out.logits[0]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return ForwardCapture(
            log_probs=torch.log_softmax(logits, dim=-1),
            attentions=[a[0] for a in out.attentions],
            values=values,
            out_proj=out_proj,
            layout=self.layout,
        )

    @torch.no_grad()
    def capture_stream(self, embeds: torch.Tensor, positions: torch.Tensor, record: bool = True,
                       keep_kv: bool = False) -> StreamCapture:
        """One forward pass of embeds [n, d] with fused attention; see :class:`StreamCapture`.

        positions [T]: where log-probabilities are wanted (only those rows reach the LM head).
        record=False keeps no per-layer data (``layers`` is empty): log-probs only.
        keep_kv=True also keeps every layer's keys and values (``kv``).
        """
        attn_modules = [self.spec.attention(layer) for layer in self.layers]
        out_proj = [self.spec.out_proj(a, self.layout) for a in attn_modules]
        recorder = AttentionRecorder({id(a): i for i, a in enumerate(attn_modules)}, keep=record,
                                     reduce_values=lambda i, v: value_norm(v, out_proj[i]))
        undo = []
        try:
            if self.spec.route_attention is not None:
                undo = [self.spec.route_attention(a, recorder.attend) for a in attn_modules]
            with recording(recorder):
                keep = positions.to(embeds.device)
                cache = DynamicCache() if keep_kv else None
                logits = self.model(inputs_embeds=embeds[None], logits_to_keep=keep,
                                    **_cache_kwargs(self.model, cache)).logits[0]
        finally:
            for fn in undo:
                fn()
        missing = [i for i in range(len(self.layers)) if i not in recorder.seen]
        if missing:
            raise UnsupportedArchitectureError(
                f"{self.spec.name}: the attention of layers {missing} did not run through heta-fast's attention "
                f"path; its adapter needs a route_attention hook (see heta_fast/adapters/base.py)")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return StreamCapture(
            log_probs=torch.log_softmax(logits, dim=-1),
            layers=[recorder.records[i] for i in range(len(self.layers))] if record else [],
            windows=[self.spec.window(self.model.config, i) for i in range(len(self.layers))],
            layout=self.layout,
            kv=[(layer.keys, layer.values) for layer in cache.layers] if keep_kv else None,
        )


def _cache_kwargs(module: nn.Module, cache) -> dict:
    """Keyword arguments that run ``module`` without a cache (None) or extending ``cache``."""
    if cache is None:
        return {"use_cache": False}
    return {"use_cache": True, _cache_keyword(type(module)): cache}


@functools.cache
def _cache_keyword(module_type: type) -> str:
    """``cache`` in recent transformers (where ``past_key_values`` is deprecated), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"
