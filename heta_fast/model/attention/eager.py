"""heta-fast's eager attention, registered with transformers as ``heta_eager``.

Why not transformers' "eager": its softmax runs in float32 whatever the model dtype, which
caps the float64 reference at ~1e-8 relative precision. This implementation keeps the input
dtype (float32 at least for half precision), returns the probabilities (the materialised
capture of the oracle needs them) and supports double backward (the curvature term needs it):
fused SDPA/flash kernels offer neither. The additive mask is transformers' eager mask (causal,
sliding window, padding). It is the model's attention whenever a pass needs derivatives of
second order or the probabilities; the other passes switch implementation (switch.py).
Attention logit soft-capping (``softcap``) is applied to the scaled scores before the mask; any
other attention option the module passes is refused (options.py).
"""
from __future__ import annotations

import torch

from ...dtypes import work_dtype
from .options import check_options, soft_cap

NAME = "heta_eager"


def heta_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, H, n, dh], key/value [B, Hkv, m, dh] -> (output [B, n, H, dh], probs [B, H, n, m])."""
    softcap = check_options(module, NAME, kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    batch, num_heads, n, head_dim = query.shape
    num_kv = key.shape[1]
    # GQA without copying keys: view the query heads as [Hkv, group] and broadcast.
    q = query.reshape(batch, num_kv, num_heads // num_kv, n, head_dim)
    scores = torch.matmul(q, key.unsqueeze(2).transpose(-1, -2)) * scaling  # [B, Hkv, G, n, m]
    scores = soft_cap(scores.reshape(batch, num_heads, n, -1), softcap)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : scores.shape[-1]]
    probs = torch.softmax(scores.to(work_dtype(scores.dtype)), dim=-1).to(value.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    p5 = probs.reshape(batch, num_kv, num_heads // num_kv, n, -1)
    out = torch.matmul(p5, value.unsqueeze(2)).reshape(batch, num_heads, n, head_dim)
    return out.transpose(1, 2).contiguous(), probs
