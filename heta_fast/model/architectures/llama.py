"""Llama-shaped attention: separate q/k/v/o projections under ``model.model.layers[i].self_attn``.

One map serves every family whose attention differs from Llama's only in what happens *before*
the attention function (which the capture records as it is) or in the MLP:

- llama (Llama 1-3.x: llama3 rope scaling changes the rotary tables only), mistral (sliding
  window), qwen2 (q/k/v biases, read through ``v_proj``); SmolLM2 is a Llama;
- qwen3, qwen3_moe (per-head q/k RMSNorm before rotary), mixtral, qwen3_moe (mixture-of-experts
  MLPs), smollm3 (some layers without rotary), granite (the attention multiplier is the
  attention ``scaling``, the residual multiplier scales every layer alike; docs/method.md).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import ArchitectureSpec, HeadLayout, linear_out_proj, split_heads


def _values(attn, layout: HeadLayout, x):
    # v_proj includes its bias when the model has one (Qwen2 does).
    return split_heads(attn.v_proj(x), layout.num_kv_heads, layout.head_dim)


def _window(config, layer_idx: int):
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer_idx] == "sliding_attention" else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


SPEC = ArchitectureSpec(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    layers=lambda model: list(model.model.layers),
    attention=lambda layer: layer.self_attn,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.o_proj.weight, layout),
    window=_window,
)

# Same module map, own name (errors name the family).
SHAPED = tuple(replace(SPEC, name=name, model_types=(name,)) for name in ("mixtral", "qwen3", "qwen3_moe", "smollm3"))


def _granite_gain(layer):
    """Granite adds residual_multiplier · (attention output): a constant gain [d_model]."""
    d = layer.self_attn.o_proj.out_features
    return torch.full((d,), float(layer.residual_multiplier), dtype=layer.self_attn.o_proj.weight.dtype,
                      device=layer.self_attn.o_proj.weight.device)


GRANITE = replace(SPEC, name="granite", model_types=("granite",), post_attention_gain=_granite_gain)
