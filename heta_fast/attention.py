"""heta-fast's own eager attention, registered with transformers as ``heta_eager``.

Why not transformers' "eager": its softmax runs in float32 whatever the model dtype, which
caps the float64 reference at ~1e-8 relative precision. This implementation keeps the input
dtype (float32 at least for half precision), returns the probabilities (the reference flow
gate needs them) and supports double backward (the curvature term needs it): fused SDPA/flash
kernels offer neither. The additive mask is transformers' eager mask (causal, sliding window,
padding). GPT-J in older transformers releases computes attention in its own module code (always
float32) and does not use this path; its adapter routes that code to
:meth:`AttentionRecorder.attend` during a capture (recent releases use the attention interface).

Streaming capture: inside ``with recording(recorder):`` (no autograd) the same function runs
fused attention instead (:func:`attention_with_lse`: the CPU flash-attention kernel, or a
query-tiled fallback), returns no probabilities, and hands the recorder what the streaming
flow gate needs per layer: post-rotary q, k, the values, the scale and the per-row
log-sum-exp. Nothing of size n x n per head is kept or returned.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch

NAME = "heta_eager"
_registered = False

# Query rows per tile of the fallback path (devices without a fused kernel that returns LSE).
_FALLBACK_BLOCK = 256


def heta_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, H, n, dh], key/value [B, Hkv, m, dh] -> (output [B, n, H, dh], probs [B, H, n, m]).

    While a recorder is active (streaming capture) probs is None and nothing n x n is kept.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    recorder = _RECORDER.get()
    if recorder is not None:
        out, _ = recorder.attend(module, query, key, value, attention_mask, scaling)
        return out.transpose(1, 2).contiguous(), None
    batch, num_heads, n, head_dim = query.shape
    num_kv = key.shape[1]
    # GQA without copying keys: view the query heads as [Hkv, group] and broadcast.
    q = query.reshape(batch, num_kv, num_heads // num_kv, n, head_dim)
    scores = torch.matmul(q, key.unsqueeze(2).transpose(-1, -2)) * scaling  # [B, Hkv, G, n, m]
    scores = scores.reshape(batch, num_heads, n, -1)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : scores.shape[-1]]
    work_dtype = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    probs = torch.softmax(scores.to(work_dtype), dim=-1).to(value.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    p5 = probs.reshape(batch, num_kv, num_heads // num_kv, n, -1)
    out = torch.matmul(p5, value.unsqueeze(2)).reshape(batch, num_heads, n, head_dim)
    return out.transpose(1, 2).contiguous(), probs


def register() -> str:
    """Register ``heta_eager`` (attention and mask) with transformers once; returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        AttentionInterface.register(NAME, heta_eager_attention)
        AttentionMaskInterface.register(NAME, eager_mask)
        _registered = True
    return NAME


# ----------------------------------------------------------------------------- fused attention
def _cpu_flash_kernel():
    """torch's fused CPU flash attention, which also returns the row log-sum-exp (or None)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def is_plain_causal(mask: torch.Tensor | None, block: int = 256) -> bool:
    """True if the additive/boolean mask [B, 1, n, m] is exactly causal (no window, no padding).

    A plain causal mask lets the fused kernel skip the masked half and read no n x m tensor.
    Checked in row blocks, so the check itself needs no n x m temporary.
    """
    if mask is None:
        return False
    n, m = mask.shape[-2:]
    cols = torch.arange(m, device=mask.device)
    for j0 in range(0, n, block):
        rows = torch.arange(j0, min(j0 + block, n), device=mask.device) + (m - n)
        causal = cols[None, :] <= rows[:, None]
        tile = mask[..., j0 : j0 + block, :]
        if mask.dtype == torch.bool:
            ok = tile == causal
        else:
            # Visible entries exactly 0, hidden ones effectively -inf (eager masks use the dtype's minimum).
            ok = torch.where(causal, tile == 0, tile <= -1e4)
        if not bool(ok.all()):
            return False
    return True


def attention_with_lse(query, key, value, mask, scale: float, causal: bool = False):
    """Softmax attention that also returns the natural-log row normaliser; no n x n output.

    query [B, H, n, dh], key/value [B, Hkv, m, dh] (GQA: head h reads kv head h // (H/Hkv)),
    mask: additive or boolean [B, 1, n, m] or None; ``causal=True`` replaces the mask.
    Returns out [B, H, n, dh] in value's dtype and lse [B, H, n] (float32 at least).
    All inputs are brought to query's dtype (GPT-J computes scores in float32).
    """
    dt = query.dtype
    key, value = key.to(dt), value.to(dt)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(dt)
    kernel = _cpu_flash_kernel()
    if query.device.type == "cpu" and kernel is not None:
        out, lse = kernel(query, key, value, 0.0, causal, attn_mask=None if causal else mask, scale=scale)
    else:
        out, lse = _attention_with_lse_tiled(query, key, value, mask, scale, causal)
    return out, lse


def _attention_with_lse_tiled(query, key, value, mask, scale, causal, block: int = _FALLBACK_BLOCK):
    """Query-tiled attention with LSE: working memory one [B, H, block, m] score tile."""
    batch, num_heads, n, head_dim = query.shape
    num_kv, m = key.shape[1], key.shape[2]
    group = num_heads // num_kv
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    q5 = query.reshape(batch, num_kv, group, n, head_dim).to(work)
    k_t = key.to(work).unsqueeze(2).transpose(-1, -2)  # [B, Hkv, 1, dh, m]
    v5 = value.to(work).unsqueeze(2)
    out = torch.empty(batch, num_heads, n, head_dim, dtype=value.dtype, device=query.device)
    lse = torch.empty(batch, num_heads, n, dtype=work, device=query.device)
    cols = torch.arange(m, device=query.device)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        s = torch.matmul(q5[:, :, :, j0:j1], k_t) * scale  # [B, Hkv, G, b, m]
        if causal:
            rows = torch.arange(j0, j1, device=query.device) + (m - n)
            s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
        elif mask is not None:
            tile = mask[:, :, j0:j1].unsqueeze(1)  # [B, 1, 1, b, m]
            s = s.masked_fill(~tile, float("-inf")) if tile.dtype == torch.bool else s + tile.to(work)
        row_lse = torch.logsumexp(s, dim=-1, keepdim=True)
        o = torch.matmul(torch.exp(s - row_lse), v5)  # [B, Hkv, G, b, dh]
        out[:, :, j0:j1] = o.reshape(batch, num_heads, j1 - j0, head_dim).to(value.dtype)
        lse[:, :, j0:j1] = row_lse.reshape(batch, num_heads, j1 - j0)
    return out, lse


# ----------------------------------------------------------------------------- capture recorder
@dataclass
class AttentionRecord:
    """What one layer's attention leaves for the streaming flow gate (batch 1).

    q: [H, n, dh] post-rotary queries; k: [Hkv, n, dh] post-rotary keys; lse: [H, n] natural-log
    softmax normaliser per query row (as the model masked it); scale: the score scale
    (scores = scale * q.k); values: the values [Hkv, n, dh] (bias included), or what the
    recorder's ``reduce_values`` made of them (the streaming capture keeps value norms [H, n]).
    """

    q: torch.Tensor
    k: torch.Tensor
    lse: torch.Tensor
    scale: float
    values: torch.Tensor


class AttentionRecorder:
    """Collects an :class:`AttentionRecord` per layer during one forward pass.

    ``layer_of`` maps id(attention module) -> layer index (the adapter's module map);
    ``keep=False`` runs the fused attention and keeps nothing (``seen`` still lists the layers);
    ``reduce_values(layer, v [Hkv, n, dh])``, if given, replaces the values by what it returns
    as soon as they exist (the values themselves are then never kept).
    """

    def __init__(self, layer_of: dict[int, int], keep: bool = True, reduce_values=None):
        self.layer_of = layer_of
        self.keep = keep
        self.reduce_values = reduce_values
        self.records: dict[int, AttentionRecord] = {}
        self.seen: set[int] = set()
        # (mask tensor, is plain causal): layers share one mask object per kind, checked once.
        self._causal: list[tuple[torch.Tensor, bool]] = []

    def attend(self, module, query, key, value, mask, scale: float):
        """Fused attention for ``module`` (shapes as :func:`attention_with_lse`), recorded.

        Returns (out [B, H, n, dh], None).
        """
        layer = self.layer_of.get(id(module))
        if layer is None:
            raise RuntimeError("an attention module outside the adapter's module map ran during capture")
        if query.shape[0] != 1:
            raise ValueError("streaming capture records a single sequence (batch 1)")
        if mask is not None:
            mask = mask[..., : key.shape[-2]]
            root = mask if mask._base is None else mask._base
            known = [flag for seen_root, flag in self._causal if seen_root is root]
            if not known:
                known = [is_plain_causal(mask)]
                self._causal.append((root, known[0]))
            causal = known[0]
        else:
            # No mask from the model at all: a causal LM with nothing to mask (n = 1) or a
            # model that relies on is_causal; either way causal is what it means.
            causal = True
        out, lse = attention_with_lse(query, key, value, mask, scale, causal=causal)
        self.seen.add(layer)
        if self.keep:
            values = value[0].detach()
            values = values.contiguous() if self.reduce_values is None else self.reduce_values(layer, values)
            self.records[layer] = AttentionRecord(
                q=query[0].detach().contiguous(), k=key[0].detach().contiguous(), lse=lse[0].detach(),
                scale=float(scale), values=values)
        return out.to(value.dtype), None


_RECORDER: contextvars.ContextVar[AttentionRecorder | None] = contextvars.ContextVar("heta_recorder", default=None)


@contextlib.contextmanager
def recording(recorder: AttentionRecorder):
    """Within this block, ``heta_eager`` runs fused attention and records into ``recorder``."""
    if torch.is_grad_enabled():
        # The fused kernels have no double backward; a capture is a plain inference pass.
        raise RuntimeError("attention recording runs under torch.no_grad() only")
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)
