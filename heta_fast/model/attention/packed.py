"""The packed attention of the information term's masked passes, registered as ``heta_packed``.

Several masked variants are laid end to end in a single sequence; segment r holds the tokens of
positions first_r .. first_r + length_r - 1 (the variant's own positions). Its queries see the
cached unmasked keys of positions [0, first_r) of its own input, which start at cache_r in the
pass's cache, followed by the segment's own keys: causal from the segment's first position, plus
the layer's sliding window; segments never see each other. With one input (one request) its
prefix is the whole cache (cache_r = 0); the variants of several requests share a pass over the
concatenation of their prefixes (each segment reads its own request's region). So a packed pass
equals separate passes position for position, with no padding and no [Q, P + Q] mask.

A segment may *jump* (the span estimate of the information term, docs/method.md §3): its first
run_r tokens hold positions first_r .. first_r + run_r - 1 and the rest resume at position
resume_r, the positions in between being read from the cache. Its keys, in position order, are
then cached [0, first_r), its run, cached [first_r + run_r, resume_r) and its remaining tokens:
every position 0 .. its last once.

A layer with attention logit soft-capping attends each segment on the math path with the cap
(SDPA cannot cap); any other attention option is refused, and the window the module passes (or
its absence) must be the layer's window in the map (options.check_window). The segment geometry
travels in the pass state (:mod:`.pass_state`) as a :class:`PackedSegments`; the information term builds it
(:mod:`heta_fast.signals.information.packing`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...dtypes import work_dtype
from .options import check_options, check_window, soft_cap
from .pass_state import current

NAME = "heta_packed"


@dataclass
class PackedSegments:
    """Segments of a packed sequence of Q tokens continuing a cache of P positions.

    positions: [Q] long, the position of each packed token
    offsets:   [B] long, where each segment starts in the packed sequence
    lengths:   [B] long, its number of tokens
    start:     the first segment's first position (one input: segment r starts at start + r)
    prefix:    P, the cached positions the pass continues (the cache's length)
    windows:   per layer, the sliding window or None
    firsts:    [B] long, each segment's first position = the cached keys it sees; None: start + r
    cache_starts: [B] long, where each segment's cached keys [0, first) begin in the cache; None: 0
    runs:      [B] long, the segment's tokens before its jump; None: its length (no jump)
    resumes:   [B] long, the position its remaining tokens start at; None: first + length (no jump)
    """

    positions: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    start: int
    prefix: int
    windows: list = field(default_factory=list)
    firsts: torch.Tensor | None = None
    cache_starts: torch.Tensor | None = None
    runs: torch.Tensor | None = None
    resumes: torch.Tensor | None = None
    _masks: dict = field(default_factory=dict)  # (segment, window) -> [L, first + L] bool

    def __post_init__(self):
        dev = self.offsets.device
        if self.firsts is None:  # one input: consecutive variants start, start + 1, ...
            self.firsts = self.start + torch.arange(self.rows, device=dev)
        if self.cache_starts is None:  # one input: its prefix is the whole cache
            self.cache_starts = torch.zeros(self.rows, dtype=torch.long, device=dev)
        if self.runs is None:  # no segment jumps
            self.runs = self.lengths.clone()
        if self.resumes is None:
            self.resumes = self.firsts + self.lengths

    @property
    def rows(self) -> int:
        return int(self.offsets.numel())

    def segment_mask(self, r: int, window: int | None) -> torch.Tensor:
        """Segment r's visibility [L, last_r + 1] (bool) over key positions 0 .. last_r (its last
        token's position): causal, within the layer's window."""
        key = (r, window)
        if key not in self._masks:
            off, length = int(self.offsets[r]), int(self.lengths[r])
            q_pos = self.positions[off : off + length, None]
            k_pos = torch.arange(int(q_pos[-1]) + 1, device=self.positions.device)[None, :]
            visible = k_pos <= q_pos
            if window is not None:
                visible &= (q_pos - k_pos) < window
            self._masks[key] = visible
        return self._masks[key]


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, Q, dh]; key/value [1, Hkv, P + Q, dh] (cached prefixes, then the packed tokens)
    -> (output [1, Q, H, dh], None), attending segment by segment."""
    softcap = check_options(module, NAME, kwargs)
    layout = current(PackedSegments, NAME)
    window = layout.windows[module.layer_idx] if layout.windows else None
    check_window(module, module.layer_idx, kwargs.get("sliding_window"), window)
    attend = F.scaled_dot_product_attention if softcap is None else _capped_attention(softcap)
    gqa = query.shape[1] != key.shape[1]
    p = layout.prefix
    outs = []
    for r in range(layout.rows):
        off, length = int(layout.offsets[r]), int(layout.lengths[r])
        c, first = int(layout.cache_starts[r]), int(layout.firsts[r])
        run, resume = int(layout.runs[r]), int(layout.resumes[r])
        # In position order: the segment's own input's cached keys [0, first), its run, the cached
        # keys it jumps over [first + run, resume) and its remaining keys (the last two empty
        # unless it jumps).
        parts = ((c, c + first), (p + off, p + off + run), (c + first + run, c + resume),
                 (p + off + run, p + off + length))
        k = torch.cat([key[:, :, a:b] for a, b in parts], dim=2)
        v = torch.cat([value[:, :, a:b] for a, b in parts], dim=2)
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
