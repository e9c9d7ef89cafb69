"""Llama-style attention with separate q/k/v/o projections: Llama, Mistral, Qwen2 (SmolLM2 is Llama)."""
from __future__ import annotations

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
