"""The recording attention of the capture pass, registered with transformers as ``heta_recording``.

During the engine's single forward pass (no autograd) every layer runs fused attention
(:func:`attention_with_lse`: the CPU flash-attention kernel, or a query-tiled fallback),
returns no probabilities, and hands an :class:`AttentionRecorder` what the signals asked for:
post-rotary q, k, the scale and the per-row log-sum-exp (from which the streaming flow gate
recomputes probabilities tile by tile), and the values, reduced at once by the requester's
function (the flow gate keeps value norms). Nothing of size n x n per head is kept or returned.
A layer with attention logit soft-capping runs the tiled path with the cap (the fused kernel
cannot cap) and its record carries the cap, so that the flow gate recomputes the same
probabilities; any attention option heta does not implement is refused (options.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...dtypes import work_dtype
from ...errors import UnsupportedArchitectureError
from .options import check_options, check_window, soft_cap
from .pass_state import current

NAME = "heta_recording"

# Query rows per tile of the fallback path (devices without a fused kernel that returns LSE).
_FALLBACK_BLOCK = 256


def recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, n, dh], key/value [1, Hkv, n, dh] -> (output [1, n, H, dh], None), recorded."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if torch.is_grad_enabled():
        # The fused kernels have no double backward; a capture is a plain inference pass.
        raise RuntimeError("the recording attention runs under torch.no_grad() only")
    softcap = check_options(module, NAME, kwargs)
    recorder = current(AttentionRecorder, NAME)
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    recorder.check_window(module, kwargs.get("sliding_window"), mask, query.shape[2])
    out, _ = recorder.attend(module, query, key, value, mask, scaling, softcap)
    return out.transpose(1, 2).contiguous(), None


# ----------------------------------------------------------------------------- fused attention
def _cpu_flash_kernel():
    """torch's fused CPU flash attention, which also returns the row log-sum-exp (or None)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def is_plain_causal(mask: torch.Tensor | None, block: int = 256, window: int | None = None) -> bool:
    """True if the additive/boolean mask [B, 1, n, m] is exactly causal (no padding), within
    ``window`` when given (query j sees keys i with j - window < i <= j).

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
        if window is not None:
            causal &= rows[:, None] - cols[None, :] < window
        tile = mask[..., j0 : j0 + block, :]
        if mask.dtype == torch.bool:
            ok = tile == causal
        else:
            # Visible entries exactly 0, hidden ones effectively -inf (eager masks use the dtype's minimum).
            ok = torch.where(causal, tile == 0, tile <= -1e4)
        if not bool(ok.all()):
            return False
    return True


def attention_with_lse(query, key, value, mask, scale: float, causal: bool = False, softcap: float | None = None):
    """Softmax attention that also returns the natural-log row normaliser; no n x n output.

    query [B, H, n, dh], key/value [B, Hkv, m, dh] (GQA: head h reads kv head h // (H/Hkv)),
    mask: additive or boolean [B, 1, n, m] or None; ``causal=True`` replaces the mask;
    softcap: scores s = c·tanh(scale·q·k / c) when given (tiled path: the fused kernel cannot cap).
    Returns out [B, H, n, dh] in value's dtype and lse [B, H, n] (float32 at least).
    All inputs are brought to query's dtype.
    """
    dt = query.dtype
    key, value = key.to(dt), value.to(dt)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(dt)
    kernel = _cpu_flash_kernel()
    if query.device.type == "cpu" and kernel is not None and softcap is None:
        out, lse = kernel(query, key, value, 0.0, causal, attn_mask=None if causal else mask, scale=scale)
    else:
        out, lse = _attention_with_lse_tiled(query, key, value, mask, scale, causal, softcap=softcap)
    return out, lse


def _attention_with_lse_tiled(query, key, value, mask, scale, causal, block: int = _FALLBACK_BLOCK,
                              softcap: float | None = None):
    """Query-tiled attention with LSE: working memory one [B, H, block, m] score tile."""
    batch, num_heads, n, head_dim = query.shape
    num_kv, m = key.shape[1], key.shape[2]
    group = num_heads // num_kv
    work = work_dtype(query.dtype)
    q5 = query.reshape(batch, num_kv, group, n, head_dim).to(work)
    k_t = key.to(work).unsqueeze(2).transpose(-1, -2)  # [B, Hkv, 1, dh, m]
    v5 = value.to(work).unsqueeze(2)
    out = torch.empty(batch, num_heads, n, head_dim, dtype=value.dtype, device=query.device)
    lse = torch.empty(batch, num_heads, n, dtype=work, device=query.device)
    cols = torch.arange(m, device=query.device)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        s = soft_cap(torch.matmul(q5[:, :, :, j0:j1], k_t) * scale, softcap)  # [B, Hkv, G, b, m]
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


# ----------------------------------------------------------------------------- recorder
@dataclass
class AttentionRecord:
    """What one layer's attention leaves for the signals, for one sequence.

    q: [H, n, dh] post-rotary queries; k: [Hkv, n, dh] post-rotary keys; lse: [H, n] natural-log
    softmax normaliser per query row (as the model masked it); scale: the score scale
    (scores = scale * q.k); values: what the requester's ``reduce_values`` made of the layer's
    values [Hkv, n, dh] (the flow gate: value norms [H, n]), or None when nobody asked.
    q, k and lse are None when only the values were asked for. softcap: the layer's attention
    logit soft-cap c (scores = c·tanh(scale·q·k / c)), None for plain scores.
    """

    q: torch.Tensor | None
    k: torch.Tensor | None
    lse: torch.Tensor | None
    scale: float
    values: torch.Tensor | None
    softcap: float | None = None


class AttentionRecorder:
    """Collects an :class:`AttentionRecord` per layer during one forward pass of one sequence
    (batch 1; ``records[layer]``; :class:`GroupRecorder` records several).

    ``layer_of`` maps id(attention module) -> layer index (the architecture's module map);
    ``attention``: keep q, k and the LSE; ``reduce_values(layer, v [Hkv, n, dh])``, if given,
    replaces the values by what it returns as soon as they exist (the values themselves are
    never kept). With neither, nothing is kept (``seen`` still lists the layers that ran).
    """

    def __init__(self, layer_of: dict[int, int], attention: bool = False,
                 reduce_values: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 windows: list[int | None] | None = None):
        self.layer_of = layer_of
        self.windows = windows
        self.attention = attention
        self.reduce_values = reduce_values
        self.records: dict[int, AttentionRecord] = {}
        self.seen: set[int] = set()
        # (mask tensor, is plain causal): layers share one mask object per kind, checked once.
        self._causal: list[tuple[torch.Tensor, bool]] = []
        # (mask tensor, window) pairs whose mask was checked to follow the window.
        self._follows: list[tuple[torch.Tensor, int | None]] = []

    @property
    def keeps(self) -> bool:
        return self.attention or self.reduce_values is not None

    def check_window(self, module, sliding_window: int | None, mask: torch.Tensor | None, n: int) -> None:
        """The window the flow gate will recompute with (the map's) must be the module's: the one
        it passes (options.check_window) and the one its mask [B, 1, n, m] applies (a module may
        pass none and mask by the config: the mask is what this pass computes; n query rows)."""
        layer = self.layer_of.get(id(module))
        if self.windows is None or layer is None:
            return
        window = self.windows[layer]
        check_window(module, layer, sliding_window, window)
        if not self._mask_follows(mask, window, n):
            shown = "no window" if window is None else f"a window of {window}"
            raise UnsupportedArchitectureError(
                f"layer {layer}: the attention mask the model builds is not causal with the architecture's "
                f"module map's window ({shown}); describe the window the model applies as the map's window "
                f"(heta_fast.model.ArchitectureSpec)")

    def _mask_follows(self, mask: torch.Tensor | None, window: int | None, n: int) -> bool:
        """Whether the mask shows causal attention within ``window`` on every sequence's own rows
        (checked once per mask object and window: layers share one mask per kind)."""
        if mask is None:  # the pass attends causally (see _is_causal), with no window
            return window is None or window >= n
        if window is None and self._is_causal(mask):
            return True
        root = mask if mask._base is None else mask._base
        if any(seen is root and w == window for seen, w in self._follows):
            return True
        follows = all(is_plain_causal(rows, window=window) for rows in self._sequences(mask))
        if follows:
            self._follows.append((root, window))
        return follows

    def _sequences(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """Each sequence's rows of the mask, [1, 1, n_b, m_b] (here the one sequence's)."""
        return [mask[:1]]

    @property
    def batch(self) -> int:
        """How many sequences one pass runs (1 here; :class:`GroupRecorder`: its group)."""
        return 1

    def attend(self, module, query, key, value, mask, scale: float, softcap: float | None = None):
        """Fused attention for ``module`` (shapes as :func:`attention_with_lse`), recorded.

        Returns (out [B, H, n, dh], None).
        """
        layer = self.layer_of.get(id(module))
        if layer is None:
            raise RuntimeError("an attention module outside the architecture's module map ran during capture")
        if query.shape[0] != self.batch:
            raise ValueError(f"the capture records {self.batch} sequence(s) per pass, this pass ran {query.shape[0]}")
        if mask is not None:
            mask = mask[..., : key.shape[-2]]
        out, lse = attention_with_lse(query, key, value, mask, scale, causal=self._is_causal(mask), softcap=softcap)
        self.seen.add(layer)
        if self.keeps:
            self._keep(layer, query.detach(), key.detach(), value.detach(), lse.detach(), float(scale), softcap)
        return out.to(value.dtype), None

    def _keep(self, layer: int, query, key, value, lse, scale: float, softcap: float | None) -> None:
        """Store layer ``layer``'s record from query [1, H, n, dh], key/value [1, Hkv, n, dh], lse [1, H, n]."""
        self.records[layer] = self._record(layer, query[0], key[0], value[0], lse[0], scale, softcap)

    def _record(self, layer: int, q, k, v, lse, scale: float, softcap: float | None) -> AttentionRecord:
        """One sequence's record from q [H, n, dh], k/v [Hkv, n, dh], lse [H, n] (what was asked for only)."""
        values = None if self.reduce_values is None else self.reduce_values(layer, v)
        keep = self.attention
        return AttentionRecord(q=q.contiguous() if keep else None, k=k.contiguous() if keep else None,
                               lse=lse if keep else None, scale=scale, values=values, softcap=softcap)

    def _is_causal(self, mask) -> bool:
        if mask is None:
            # No mask from the model at all: a causal LM with nothing to mask (n = 1) or a
            # model that relies on is_causal; either way causal is what it means.
            return True
        root = mask if mask._base is None else mask._base
        for seen_root, flag in self._causal:
            if seen_root is root:
                return flag
        flag = is_plain_causal(mask)
        self._causal.append((root, flag))
        return flag


class GroupRecorder(AttentionRecorder):
    """An :class:`AttentionRecorder` for one pass of B right-padded sequences of ``lengths`` [B].

    ``groups[b][layer]`` is sequence b's :class:`AttentionRecord`, cut to its own n_b rows and
    keys: q [H, n_b, dh], k [Hkv, n_b, dh], lse [H, n_b], values reduced from v [Hkv, n_b, dh].
    Under causal attention the padding after a sequence changes none of its rows, so the cut
    record equals the one a pass of that sequence alone leaves (to float rounding).
    ``records`` stays empty.
    """

    def __init__(self, layer_of: dict[int, int], lengths: list[int], **options):
        super().__init__(layer_of, **options)
        self.lengths = [int(n) for n in lengths]
        self.groups: list[dict[int, AttentionRecord]] = [{} for _ in self.lengths]

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def _sequences(self, mask: torch.Tensor) -> list[torch.Tensor]:
        # Sequence b's own rows and keys: the padding after it is hidden by causality already.
        return [mask[min(b, mask.shape[0] - 1), None, :, :n, :n] for b, n in enumerate(self.lengths)]

    def _keep(self, layer: int, query, key, value, lse, scale: float, softcap: float | None) -> None:
        for b, n in enumerate(self.lengths):
            # lse cloned (q, k: contiguous copies of strided slices): a view would keep the whole batch alive.
            self.groups[b][layer] = self._record(layer, query[b, :, :n], key[b, :, :n], value[b, :, :n],
                                                 lse[b, :, :n].clone(), scale, softcap)
