"""GPT-NeoX / Pythia: fused ``query_key_value`` interleaved *per head* (output rows
[h0: q k v | h1: q k v | ...], each dh wide), partial rotary (recorded as applied), attention and
MLP in parallel off the same residual, output projection ``dense``."""
from __future__ import annotations

from .base import ArchitectureSpec, HeadLayout, linear_out_proj


def _values(attn, layout: HeadLayout, x):
    """x [B, n, d] -> values [B, n, H, dh]: per head, the last third of its 3·dh block."""
    dh = layout.head_dim
    qkv = attn.query_key_value(x)  # [B, n, H * 3 * dh], bias included
    return qkv.reshape(*qkv.shape[:-1], layout.num_kv_heads, 3 * dh)[..., 2 * dh:]


SPEC = ArchitectureSpec(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers=lambda model: list(model.gpt_neox.layers),
    attention=lambda layer: layer.attention,
    values=_values,
    out_proj=lambda attn, layout: linear_out_proj(attn.dense.weight, layout),
)
