"""Several masked variants of one input laid end to end in a single sequence (the packed layout).

Variant r of a batch masks token a + r and runs positions a + r .. N - 1; its *segment* of the
packed sequence holds exactly those tokens, at those positions (``position_ids``: rotary and
absolute positions are the variant's own). The MLPs, norms and projections of all segments run
as one sequence; only attention is per segment: the model layer's ``heta_packed`` attention
(:mod:`heta_fast.model.attention.packed`) gives segment r's queries the cached unmasked keys of
positions [0, a + r) followed by the segment's own keys, which for the segment is exactly a
continuation of the unmasked prefix. So the packed pass equals B separate passes position for
position, with no padding and no [Q, P + Q] mask.

The span estimate (``information_estimator="span"``, docs/method.md §3) packs shorter variants:
variant i runs positions i .. i+s-1 and the last positions from ``resume`` on (s before the first
target, and the targets' own), jumping over the positions in between, whose keys and values it
reads unmasked from the cache.

Variants of several inputs (requests) share a pass by :meth:`PackedVariants.join`: the pass's
cache is then the concatenation of each input's prefix (:func:`.prefix_cache.joined_cache`), and
each segment reads its own input's region of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model.adapter import ModelAdapter
from ...model.attention import can_switch
from ...model.attention.packed import PackedSegments
from ...model.attention.pass_state import pass_state
from .masked_batches import MaskedBatch


@dataclass
class PackedVariants(PackedSegments):
    """The packed sequence of variants a .. a+B-1 of an input of N positions.

    embeds:    [Q, d] inputs, Q = Σ_r (N - a - r); each segment's first row is its mask vector
    (and the segment geometry of :class:`~heta_fast.model.attention.packed.PackedSegments`:
    positions [Q], offsets [B], lengths [B] = N - a - r, start a, prefix P = a + B - 1)
    """

    embeds: torch.Tensor = None

    @classmethod
    def build(cls, seq: torch.Tensor, batch: MaskedBatch, mask_rows: torch.Tensor,
              windows: list | None = None) -> "PackedVariants":
        """seq [N', d] the input (N' >= batch.start + batch.length); the batch's packed variants,
        laid out by :meth:`MaskedBatch.row` (the span estimate's rows jump over cached positions);
        mask_rows [rows, d] the vectors replacing each variant's masked token; windows: per layer."""
        dev = seq.device
        geometry = torch.tensor([batch.row(r) for r in range(batch.rows)], dtype=torch.long, device=dev)
        runs, lengths = geometry[:, 0], geometry[:, 1]  # [B]
        firsts = batch.start + torch.arange(batch.rows, device=dev)
        segment = torch.repeat_interleave(torch.arange(batch.rows, device=dev), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(segment.numel(), device=dev) - offsets[segment]  # a token's index in its segment
        # Tokens before the jump sit at first + index; the rest resume at batch.resume.
        positions = torch.where(within < runs[segment], firsts[segment] + within,
                                batch.resume + within - runs[segment])
        embeds = seq[positions].clone()
        embeds[offsets] = mask_rows.to(embeds.dtype)
        resumes = torch.where(runs < lengths, batch.resume, firsts + lengths)
        return cls(positions=positions, offsets=offsets, lengths=lengths, start=batch.start, prefix=batch.prefix,
                   windows=list(windows or []), runs=runs, resumes=resumes, embeds=embeds)

    @classmethod
    def join(cls, parts: list["PackedVariants"]) -> "PackedVariants":
        """One pass holding the segments of several inputs' packed variants, in order.

        The pass's cache is the concatenation of the parts' prefixes (part j's cached positions
        [0, parts[j].prefix) at cache offset Σ_{i<j} parts[i].prefix, as :func:`.prefix_cache.joined_cache`
        lays them out); every segment keeps its own positions. The parts must share the per-layer windows.
        """
        dev = parts[0].offsets.device
        sizes = torch.tensor([int(p.positions.numel()) for p in parts], device=dev)
        cached = torch.tensor([p.prefix for p in parts], device=dev)
        packed_at, cache_at = torch.cumsum(sizes, 0) - sizes, torch.cumsum(cached, 0) - cached  # [parts]
        return cls(positions=torch.cat([p.positions for p in parts]),
                   offsets=torch.cat([p.offsets + packed_at[j] for j, p in enumerate(parts)]),
                   lengths=torch.cat([p.lengths for p in parts]), start=parts[0].start, prefix=int(cached.sum()),
                   windows=parts[0].windows, firsts=torch.cat([p.firsts for p in parts]),
                   cache_starts=torch.cat([p.cache_starts + cache_at[j] for j, p in enumerate(parts)]),
                   runs=torch.cat([p.runs for p in parts]), resumes=torch.cat([p.resumes for p in parts]),
                   embeds=torch.cat([p.embeds for p in parts]))

    def rows_at(self, target_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each (variant, target) is read: target_positions [T] -> (index [B, T] into the
        packed sequence, valid [B, T]: the target is at or after the variant's masked token)."""
        masked = self.firsts  # [B]: a variant's first position is its masked token
        rel = target_positions[None, :] - masked[:, None]
        valid = rel >= 0
        # After a jump, the target's index in its segment is counted from the resume position.
        after = target_positions[None, :] >= (masked + self.runs)[:, None]
        rel = torch.where(after, self.runs[:, None] + target_positions[None, :] - self.resumes[:, None], rel)
        return self.offsets[:, None] + rel.clamp(min=0), valid


def can_pack(adapter: ModelAdapter) -> bool:
    """Whether the model's attention can be switched to ``heta_packed`` at run time (and every
    attention module knows its layer index, which picks the layer's window)."""
    if not can_switch(adapter.model):
        return False
    return all(hasattr(adapter.spec.attention(layer), "layer_idx") for layer in adapter.layers)


def run_packed(adapter: ModelAdapter, layout: PackedVariants, cache) -> torch.Tensor:
    """Final hidden states [Q, d] of the packed sequence continuing ``cache`` (positions [0, P)).

    The model must run the ``heta_packed`` attention (the caller switches to it)."""
    with pass_state(layout):
        return adapter.hidden_states(layout.embeds[None], cache, position_ids=layout.positions[None])[0]
