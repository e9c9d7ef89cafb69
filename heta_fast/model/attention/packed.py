"""The packed attention of the information term's masked passes, registered as ``heta_packed``.

Several masked variants of one input are laid end to end in a single sequence; segment r holds
the tokens of positions first_r .. first_r + length_r - 1 (the variant's own positions). Its
queries see the cached unmasked keys of positions [0, first_r) followed by the segment's own
keys: causal from the segment's first position, plus the layer's sliding window; segments
never see each other. So a packed pass equals separate passes position for position, with no
padding and no [Q, P + Q] mask. A layer with attention logit soft-capping attends each segment
on the math path with the cap (SDPA cannot cap); any other attention option is refused, and a
sliding window the module passes must be the layer's window. The segment geometry travels in the pass state
(:mod:`.pass_state`) as a :class:`PackedSegments`; the information term builds it
(:mod:`heta_fast.signals.information.packing`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...dtypes import work_dtype
from ...errors import UnsupportedArchitectureError
from .options import check_options, soft_cap
from .pass_state import current

NAME = "heta_packed"


@dataclass
class PackedSegments:
    """Segments of a packed sequence of Q tokens continuing a cache of P positions.

    positions: [Q] long, the position of each packed token
    offsets:   [B] long, where each segment starts in the packed sequence
    lengths:   [B] long, its number of tokens
    start:     the first segment's first position; segment r starts at position start + r
    prefix:    P, the cached positions the pass continues
    windows:   per layer, the sliding window or None
    """

    positions: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    start: int
    prefix: int
    windows: list = field(default_factory=list)
    _masks: dict = field(default_factory=dict)  # (segment, window) -> [L, first + L] bool

    @property
    def rows(self) -> int:
        return int(self.offsets.numel())

    def segment_mask(self, r: int, window: int | None) -> torch.Tensor:
        """Segment r's visibility [L, a + r + L] (bool) over key positions 0 .. a + r + L - 1:
        causal from the segment's first position, within the layer's window."""
        key = (r, window)
        if key not in self._masks:
            first, length = self.start + r, int(self.lengths[r])
            q_pos = torch.arange(first, first + length, device=self.positions.device)[:, None]
            k_pos = torch.arange(first + length, device=self.positions.device)[None, :]
            visible = k_pos <= q_pos
            if window is not None:
                visible &= (q_pos - k_pos) < window
            self._masks[key] = visible
        return self._masks[key]


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, Q, dh]; key/value [1, Hkv, P + Q, dh] (cached prefix, then the packed tokens)
    -> (output [1, Q, H, dh], None), attending segment by segment."""
    softcap = check_options(module, NAME, kwargs)
    layout = current(PackedSegments, NAME)
    window = layout.windows[module.layer_idx] if layout.windows else None
    if kwargs.get("sliding_window") is not None and kwargs["sliding_window"] != window:
        raise UnsupportedArchitectureError(f"layer {module.layer_idx}: the module's sliding window "
                                           f"{kwargs['sliding_window']} is not the layer's window {window}")
    attend = F.scaled_dot_product_attention if softcap is None else _capped_attention(softcap)
    gqa = query.shape[1] != key.shape[1]
    p = layout.prefix
    outs = []
    for r in range(layout.rows):
        off, length, first = int(layout.offsets[r]), int(layout.lengths[r]), layout.start + r
        k = torch.cat([key[:, :, :first], key[:, :, p + off : p + off + length]], dim=2)
        v = torch.cat([value[:, :, :first], value[:, :, p + off : p + off + length]], dim=2)
        outs.append(attend(query[:, :, off : off + length], k, v, attn_mask=layout.segment_mask(r, window),
                           scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _capped_attention(softcap: float):
    """An SDPA-like function (boolean mask, GQA) that soft-caps the scaled scores before the mask."""

    def attend(q, k, v, attn_mask, scale=None, enable_gqa=False):
        """q [1, H, L, dh], k/v [1, Hkv, M, dh], attn_mask [L, M] bool -> [1, H, L, dh]."""
        if scale is None:
            scale = q.shape[-1] ** -0.5
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        s = soft_cap(torch.matmul(q, k.transpose(-1, -2)) * scale, softcap)
        s = s.to(work_dtype(s.dtype)).masked_fill(~attn_mask, float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)

    return attend
