"""Several masked variants of one input laid end to end in a single sequence (the packed layout).

Variant r of a batch masks token a + r and runs positions a + r .. N - 1; its *segment* of the
packed sequence holds exactly those tokens, at those positions (``position_ids``: rotary and
absolute positions are the variant's own). The MLPs, norms and projections of all segments run
as one sequence; only attention is per segment. ``heta_packed``, an attention function
registered with transformers, gives segment r's queries the cached unmasked keys of positions
[0, a + r) followed by the segment's own keys: for the segment this is exactly a continuation of
the unmasked prefix (causal from its first position, plus the layer's sliding window), and
segments never see each other. So the packed pass equals B separate passes position for
position, with no padding and no [Q, P + Q] mask.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model_adapter import ModelAdapter

NAME = "heta_packed"
_registered = False
_LAYOUT: contextvars.ContextVar["PackedVariants | None"] = contextvars.ContextVar("heta_packed_layout", default=None)


@dataclass
class PackedVariants:
    """The packed sequence of variants a .. a+B-1 of an input of N positions.

    embeds:    [Q, d] inputs, Q = Σ_r (N - a - r); each segment's first row is its mask vector
    positions: [Q] long, the position of each packed token
    offsets:   [B] long, where each segment starts in the packed sequence
    lengths:   [B] long, its number of tokens (N - a - r)
    start:     a, the first masked token; segment r starts at position a + r
    prefix:    P = a + B - 1, the cached positions the pass continues (the last segment's prefix)
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    start: int
    prefix: int
    windows: list = field(default_factory=list)     # per layer: sliding window or None
    _masks: dict = field(default_factory=dict)      # (segment, window) -> [L, a + r + L] bool

    @classmethod
    def build(cls, seq: torch.Tensor, start: int, rows: int, total: int, mask_rows: torch.Tensor,
              windows: list | None = None) -> "PackedVariants":
        """seq [N', d] the input (N' >= total); variants start .. start+rows-1 run up to ``total``;
        mask_rows [rows, d] the vectors replacing each variant's masked token; windows: per layer."""
        dev = seq.device
        lengths = total - start - torch.arange(rows, device=dev)  # [B]
        segment = torch.repeat_interleave(torch.arange(rows, device=dev), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = start + segment + (torch.arange(segment.numel(), device=dev) - offsets[segment])
        embeds = seq[positions].clone()
        embeds[offsets] = mask_rows.to(embeds.dtype)
        return cls(embeds, positions, offsets, lengths, start, start + rows - 1, list(windows or []))

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

    def rows_at(self, target_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each (variant, target) is read: target_positions [T] -> (index [B, T] into the
        packed sequence, valid [B, T]: the target is at or after the variant's masked token)."""
        masked = self.start + torch.arange(self.rows, device=self.offsets.device)  # [B]
        rel = target_positions[None, :] - masked[:, None]
        valid = rel >= 0
        return self.offsets[:, None] + rel.clamp(min=0), valid


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, Q, dh]; key/value [1, Hkv, P + Q, dh] (cached prefix, then the packed tokens)
    -> (output [1, Q, H, dh], None), attending segment by segment (see the module docstring)."""
    layout = _LAYOUT.get()
    if layout is None:
        raise RuntimeError("heta_packed attention ran outside a packed pass")
    window = layout.windows[module.layer_idx] if layout.windows else None
    gqa = query.shape[1] != key.shape[1]
    p = layout.prefix
    outs = []
    for r in range(layout.rows):
        off, length, first = int(layout.offsets[r]), int(layout.lengths[r]), layout.start + r
        k = torch.cat([key[:, :, :first], key[:, :, p + off : p + off + length]], dim=2)
        v = torch.cat([value[:, :, :first], value[:, :, p + off : p + off + length]], dim=2)
        outs.append(F.scaled_dot_product_attention(query[:, :, off : off + length], k, v,
                                                   attn_mask=layout.segment_mask(r, window),
                                                   scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``heta_packed`` with transformers' attention functions once; returns the name.

    No mask function is registered, so transformers builds no mask for it: visibility is
    decided per segment here."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, packed_attention)
        _registered = True
    return NAME


@contextlib.contextmanager
def packed_pass(layout: PackedVariants):
    """Make ``layout`` the one ``heta_packed`` attends by, for the block."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def can_pack(adapter: ModelAdapter) -> bool:
    """Whether the model's attention can be switched to ``heta_packed`` at run time (and every
    attention module knows its layer index, which picks the layer's window)."""
    model = adapter.model
    can_switch = getattr(model, "_can_set_attn_implementation", None)
    if can_switch is None or not can_switch():
        return False
    return all(hasattr(adapter.spec.attention(layer), "layer_idx") for layer in adapter.layers)


def run_packed(adapter: ModelAdapter, layout: PackedVariants, cache) -> torch.Tensor:
    """Final hidden states [Q, d] of the packed sequence continuing ``cache`` (positions [0, P))."""
    with packed_pass(layout):
        return adapter.hidden_states(layout.embeds[None], cache, position_ids=layout.positions[None])[0]
