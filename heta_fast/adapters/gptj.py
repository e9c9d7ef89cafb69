"""GPT-J: separate q/k/v/out_proj (no biases), rotary positions, attention and MLP in parallel."""
from __future__ import annotations

import torch

from .base import ArchitectureSpec, HeadLayout, linear_out_proj, split_heads


def _values(attn, layout: HeadLayout, x):
    return split_heads(attn.v_proj(x), layout.num_kv_heads, layout.head_dim)


def _route_attention(attn, attend):
    """GPT-J's attention runs in its own ``_attn`` (scores in float32, divided by sqrt(dh)), not
    through the attention interface; during a streaming capture an instance attribute shadows
    that method and sends the post-rotary q, k to ``attend`` with the same float32 scores."""

    def _attn(query, key, value, attention_mask=None):
        out, _ = attend(attn, query.to(torch.float32), key.to(torch.float32), value, attention_mask,
                        1.0 / attn.scale_attn)
        return out, None  # GPT-J merges heads from [B, H, n, dh] itself

    attn._attn = _attn
    return lambda: delattr(attn, "_attn")


SPEC = ArchitectureSpec(
    name="gptj",
    model_types=("gptj",),
    layers=lambda model: list(model.transformer.h),
    attention=lambda layer: layer.attn,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.out_proj.weight, layout),
    route_attention=_route_attention,
)
