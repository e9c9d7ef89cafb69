"""The information term of several requests at once: their masked variants packed in shared passes.

One request's variants run packed end to end on top of its own prefix cache (packing.py). Here a
pass may also hold the variants of the next requests: the pass's cache is the concatenation of
each request's unmasked prefix (:func:`.prefix_cache.joined_cache`), each segment attends to its
own request's region of it and its own earlier tokens (:mod:`heta_fast.model.attention.packed`),
at its own positions. So several requests' short passes (typically each one's last, partial
pass) fill one pass, and every request's numbers are those of :func:`.signal.information` alone
(to float rounding): a segment sees exactly what it sees in its own request's pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...dtypes import accumulation_dtype
from ...memory import ModelShape, packed_pass_bytes
from ...model.adapter import ModelAdapter
from ...model.attention import PACKED, attention_implementation
from ...ops.vocab_kl import vocab_kl
from .masked_batches import GroupPass, plan_group
from .packing import PackedVariants, run_packed
from .prefix_cache import PrefixCache, joined_cache
from .signal import CPU_TOKENS_PER_PASS, KL_CHUNK, PassPlan, information, plan_passes


@dataclass
class GroupItem:
    """One request of a group.

    embeds:         [n, d] input embeddings (context + target[:-1])
    positions:      [T] long, the positions predicting each target
    n_context:      context tokens
    mask_vectors:   [n_context, d]; row i replaces x_i's input embedding
    orig_log_probs: [T, V] log P_orig at the targets
    prefix:         the request's unmasked keys and values for at least [0, n_context - 1)
                    (``PrefixCache.from_kv(capture.kv, n_context - 1)``)
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    n_context: int
    mask_vectors: torch.Tensor
    orig_log_probs: torch.Tensor
    prefix: PrefixCache


@torch.no_grad()
def information_group(adapter: ModelAdapter, items: list[GroupItem], config, on_variants=None,
                      stats: dict | None = None) -> list[torch.Tensor]:
    """Per item, I [T, n_context], equal (to float rounding) to ``information(adapter, item.embeds,
    item.positions, item.n_context, item.mask_vectors, item.orig_log_probs, config, prefix=item.prefix)``.

    The items whose variants can share packed passes run together; these run alone, through
    :func:`.signal.information`:
    - every item when ``config.information_estimator`` is "fisher" (no masked passes); the
      "exact" and "span" estimates share passes, each request's rows as :func:`information` lays them out;
    - every item when the model's attention cannot run packed (``can_pack(adapter)`` is False) or
      the no-grad attention is FlashAttention-2 (rectangular layout);
    - an item whose context spans more than one window under ``config.window_size``.

    Passes take variants of consecutive items under the single-request planner's caps: the memory
    model (``config.memory_budget``), ``config.max_batch`` variants and, on a CPU,
    CPU_TOKENS_PER_PASS token-positions. Every item's passes are planned before any runs, so a
    variant that does not fit alone raises MemoryBudgetError before any work, as :func:`information` does.

    on_variants(k): called after every pass with its number of variants k (an item run alone calls
    it per pass of its own).
    stats: if a dict, filled with ``passes`` (shared passes run), ``passes_alone`` (the passes
    the packed items would take one request at a time), ``mixed_passes`` (passes holding several
    items), ``masked_positions`` and ``alone`` (indices of the items run alone).
    """
    # Plan every item as information() would: this raises its MemoryBudgetError before any work.
    plans = [plan_passes(adapter, it.n_context, it.positions.to(it.embeds.device).long(), config, prefix_given=True)
             for it in items]
    together = [i for i, plan in enumerate(plans) if _can_share(plan, config)]
    alone = [i for i in range(len(items)) if i not in together]
    passes = _plan(adapter, [items[i] for i in together], [plans[i] for i in together], config)
    out: list[torch.Tensor | None] = [None] * len(items)
    if together:
        shared = _run(adapter, [items[i] for i in together], passes, on_variants)
        for i, scores in zip(together, shared):
            out[i] = scores
    for i in alone:
        it = items[i]
        out[i] = information(adapter, it.embeds, it.positions, it.n_context, it.mask_vectors, it.orig_log_probs,
                             config, prefix=it.prefix, on_variants=on_variants)
    if stats is not None:
        stats.update(passes=len(passes), passes_alone=sum(len(plans[i].batches) for i in together),
                     mixed_passes=sum(len({item for item, _ in p.parts}) > 1 for p in passes),
                     masked_positions=sum(p.positions for p in passes), alone=alone)
    return out


def _can_share(plan: PassPlan, config) -> bool:
    """Whether an item's variants can run in shared packed passes (see :func:`information_group`)."""
    return config.information_estimator in ("exact", "span") and plan.layout == "packed" and len(plan.windows) == 1


def _plan(adapter: ModelAdapter, items: list[GroupItem], plans: list[PassPlan], config) -> list[GroupPass]:
    """The shared passes of items (each one window, packed), under the single-request caps."""
    shape = ModelShape.of(adapter.model)
    targets = [it.positions.numel() for it in items]

    def pass_bytes(p: GroupPass) -> int:
        # The packed pass's memory rule with the fixed bytes (prefix cache, reference) of the
        # requests in it and all their KL reads: for one request, MaskedPassBudget.batch_bytes.
        fixed = sum(plans[i].budget.fixed for i in {item for item, _ in p.parts})
        reads = sum(b.rows * targets[i] for i, b in p.parts)
        return packed_pass_bytes(shape, fixed, p.positions, p.prefix, reads, KL_CHUNK)

    spans = [(0, it.n_context, int(it.positions.max()) + 1) for it in items]
    tokens = CPU_TOKENS_PER_PASS if adapter.device.type == "cpu" else None
    # The span estimate's rows: a request's resume is its single-request plan's (one window each).
    span = config.information_span if config.information_estimator == "span" else None
    resumes = [plan.batches[0].resume if plan.batches else 0 for plan in plans] if span is not None else None
    return plan_group(spans, config.max_batch, lambda p: pass_bytes(p) <= config.memory_budget, tokens,
                      span=span, resumes=resumes)


def _run(adapter: ModelAdapter, items: list[GroupItem], passes: list[GroupPass], on_variants) -> list[torch.Tensor]:
    """Run the shared passes; per item I [T, n_context]."""
    weight, bias, transform = adapter.unembedding(transforms=True)
    kl_options = transform.kl_options(vocab_kl, adapter.spec.name)  # refuses a transform the fused KL cannot apply
    windows = [adapter.window(i) for i in range(len(adapter.layers))]
    positions = [it.positions.to(it.embeds.device).long() for it in items]
    # One reference [ΣT, V]: item j's targets are rows first_target[j] .. first_target[j] + T_j - 1.
    reference = torch.cat([it.orig_log_probs for it in items])
    sizes = torch.tensor([p.numel() for p in positions])
    first_target = (torch.cumsum(sizes, 0) - sizes).tolist()
    out = [torch.zeros(p.numel(), it.n_context, dtype=accumulation_dtype(it.embeds), device=it.embeds.device)
           for it, p in zip(items, positions)]
    with attention_implementation(adapter.model, PACKED):
        for group_pass in passes:
            parts, reads, target_rows, valid = [], [], [], []
            packed_at = 0
            for i, b in group_pass.parts:
                it, a = items[i], b.start
                part = PackedVariants.build(it.embeds, b, it.mask_vectors[a : a + b.rows], windows)
                index, ok = part.rows_at(positions[i])  # [rows, T_i] into the part
                parts.append(part)
                reads.append((index + packed_at).reshape(-1))
                target_rows.append(torch.arange(first_target[i], first_target[i] + positions[i].numel(),
                                                device=index.device).repeat(b.rows))
                valid.append(ok)
                packed_at += part.positions.numel()
            packed = PackedVariants.join(parts)
            cache = joined_cache([(items[i].prefix, b.prefix) for i, b in group_pass.parts])
            hidden = run_packed(adapter, packed, cache)  # [Q, d]
            kl = vocab_kl(hidden[torch.cat(reads)], weight, reference, torch.cat(target_rows), bias,
                          chunk_size=KL_CHUNK, **kl_options)
            for (i, b), ok, part_kl in zip(group_pass.parts, valid, kl.split([v.numel() for v in valid])):
                part_kl = part_kl.view(b.rows, -1)
                # A target predicted before the masked token sees no change: exactly 0, as alone.
                part_kl = torch.where(ok, part_kl, torch.zeros_like(part_kl))
                out[i][:, b.start : b.start + b.rows] = part_kl.t().to(out[i].dtype)
            if on_variants is not None:
                on_variants(group_pass.rows)
    return out
