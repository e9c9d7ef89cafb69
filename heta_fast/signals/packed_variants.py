"""Several masked variants of one input laid end to end in a single sequence (the packed layout).

Variant r of a batch masks token a + r and runs positions a + r .. N - 1; its segment of the
packed sequence holds exactly those tokens, at those positions (rotary / absolute positions come
from ``position_ids``, so a segment is computed as if it continued the unmasked prefix). The
attention mask lets a query of segment r at position p see

- the cached unmasked keys at positions j < a + r (the prefix its variant shares), and
- the keys of its own segment at positions p' <= p,

each further limited to p - j < w on a layer with a sliding window w (transformers' convention).
Segments never see each other, so the packed pass equals B separate passes position for position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model_adapter import ModelAdapter


@dataclass
class PackedVariants:
    """The packed sequence of variants a .. a+B-1 of an input of N positions.

    embeds:    [Q, d] inputs, Q = Σ_r (N - a - r); each segment's first row is its mask vector
    positions: [Q] long, the position of each packed token
    segment:   [Q] long, which variant (0 .. B-1) each packed token belongs to
    offsets:   [B] long, where each segment starts in the packed sequence
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    segment: torch.Tensor
    offsets: torch.Tensor
    start: int

    @classmethod
    def build(cls, seq: torch.Tensor, start: int, rows: int, total: int, mask_rows: torch.Tensor) -> "PackedVariants":
        """seq [N', d] the input (N' >= total), variants start .. start+rows-1 run up to ``total``;
        mask_rows [rows, d] the vectors replacing each variant's masked token."""
        dev = seq.device
        lengths = total - start - torch.arange(rows, device=dev)  # [B]
        segment = torch.repeat_interleave(torch.arange(rows, device=dev), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = start + segment + (torch.arange(segment.numel(), device=dev) - offsets[segment])
        embeds = seq[positions].clone()
        embeds[offsets] = mask_rows.to(embeds.dtype)
        return cls(embeds, positions, segment, offsets, start)

    def attention_mask(self, prefix: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [1, 1, Q, prefix + Q] (0 visible, dtype's minimum hidden) over the cached
        prefix [0, prefix) followed by the packed keys; see the module docstring."""
        dev = self.positions.device
        q_pos, q_seg = self.positions[:, None], self.segment[:, None]
        cached = torch.arange(prefix, device=dev)[None, :] < (self.start + q_seg)        # [Q, P]
        own = (self.segment[None, :] == q_seg) & (self.positions[None, :] <= q_pos)      # [Q, Q]
        visible = torch.cat([cached, own], dim=1)
        if window is not None:
            key_pos = torch.cat([torch.arange(prefix, device=dev), self.positions])
            visible &= (q_pos - key_pos[None, :]) < window
        mask = torch.zeros(visible.shape, dtype=dtype, device=dev)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[None, None]

    def rows_at(self, target_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each (variant, target) is read: target_positions [T] -> (index [B, T] into the
        packed sequence, valid [B, T]: the target is at or after the variant's masked token)."""
        masked = self.start + torch.arange(self.offsets.numel(), device=self.offsets.device)  # [B]
        rel = target_positions[None, :] - masked[:, None]
        valid = rel >= 0
        return self.offsets[:, None] + rel.clamp(min=0), valid


def layer_masks(adapter: ModelAdapter, packed: PackedVariants, prefix: int):
    """The attention mask(s) of a packed pass: one tensor if every layer has the same window, else
    a dict by layer type (transformers' models with mixed layers accept that)."""
    config = adapter.model.config
    windows = [adapter.spec.window(config, i) for i in range(len(adapter.layers))]
    dtype = adapter.dtype
    if len(set(windows)) == 1:
        return packed.attention_mask(prefix, windows[0], dtype)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        raise NotImplementedError(f"{adapter.spec.name}: layers with different attention windows but no "
                                  f"layer_types in the config; the packed layout cannot mask them")
    by_type: dict[str, torch.Tensor] = {}
    for kind, window in zip(layer_types, windows):
        if kind not in by_type:
            by_type[kind] = packed.attention_mask(prefix, window, dtype)
    return by_type
