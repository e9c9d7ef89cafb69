"""Phi-3: fused qkv_proj (rows q | k | v, GQA-aware), separate o_proj; the window its attention
passes (``config_window``). Longrope's length-dependent rotary: heta_fast/model/rotary.py."""
from __future__ import annotations

from .base import ArchitectureSpec, HeadLayout, linear_out_proj, split_heads
from .llama import config_window


def _values(attn, layout: HeadLayout, x):
    start = (layout.num_heads + layout.num_kv_heads) * layout.head_dim
    stop = start + layout.num_kv_heads * layout.head_dim
    w = attn.qkv_proj.weight[start:stop]  # nn.Linear weight [out, in]
    b = attn.qkv_proj.bias[start:stop] if attn.qkv_proj.bias is not None else None
    v = x @ w.t()
    if b is not None:
        v = v + b
    return split_heads(v, layout.num_kv_heads, layout.head_dim)


SPEC = ArchitectureSpec(
    name="phi3",
    model_types=("phi3",),
    layers=lambda model: list(model.model.layers),
    attention=lambda layer: layer.self_attn,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.o_proj.weight, layout),
    window=config_window,
)
