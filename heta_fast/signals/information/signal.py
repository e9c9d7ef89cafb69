"""Information term I_i = KL(P_orig ‖ P_masked^(i)) at each target position (docs/method.md §3).

The fast path does close to the irreducible work:

- prefix sharing: the unmasked input's keys and values come from the engine's forward pass
  (:class:`PrefixCache`); the variant masking token i runs only positions i .. N-1 on top of
  the cached keys and values of [0, i), so the masked passes cost Σ_i (N - i) ≈ n²/2
  token-positions instead of n²;
- batching: consecutive variants share a pass, packed end to end without padding and attending
  segment by segment (packing.py, masked_batches.py), as many as the memory budget allows; one
  variant that does not fit raises :class:`MemoryBudgetError` up front;
- every target is read from the same masked pass (all targets lie at or after the masked token);
- only the targets' final hidden states reach the LM head, through the fused vocabulary KL
  (:func:`heta_fast.ops.vocab_kl.vocab_kl`): no [rows, V] logits or probabilities exist;
- the passes run on a fused attention kernel (:mod:`heta_fast.model.attention`);
- windows (HETA-LR+WIN, :mod:`heta_fast.windows`) bound the variant length on long contexts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...dtypes import accumulation_dtype
from ...errors import ConfigError
from ...memory import MaskedPassBudget, ModelShape
from ...model.adapter import ModelAdapter
from ...model.attention import FLASH, PACKED, attention_implementation, choose_no_grad_attention
from ...ops.vocab_kl import vocab_kl
from ...windows import Window, average_over_windows, context_windows, window_input, window_positions
from .masked_batches import MaskedBatch, plan_batches
from .packing import PackedVariants, can_pack, run_packed
from .prefix_cache import PrefixCache

# Vocabulary columns per chunk of the fused KL on the CPU path.
KL_CHUNK = 8192
# On a CPU, token-positions per packed pass: the matrix products run at nearly full speed from a
# few hundred positions on (SmolLM2-135M, n = 128, one thread: 22.0 / 18.2 / 17.0 / 16.6 s CPU for
# the information term at 128 / 256 / 512 / 1024 positions per pass), and wider passes only hold
# more activations. Accelerators batch up to the memory budget and max_batch.
CPU_TOKENS_PER_PASS = 1024


@dataclass
class PassPlan:
    """The information term's passes for one request, decided before any runs.

    windows / window_positions: the context windows and each window's target positions [T];
    batches: the masked passes (:class:`MaskedBatch`); budget: their memory model;
    implementation: the no-grad attention; layout: "packed" or "rectangular".
    """

    windows: list[Window]
    window_positions: list[torch.Tensor]
    batches: list[MaskedBatch]
    budget: MaskedPassBudget
    implementation: str | None
    layout: str

    @property
    def peak_bytes(self) -> int:
        """Estimated peak of the largest pass (the memory model's, model weights excluded)."""
        return max([self.budget.batch_bytes(b) for b in self.batches] + [self.budget.prefix_bytes()])


def plan_passes(adapter: ModelAdapter, n_context: int, positions: torch.Tensor, config, *, prefix_given: bool,
                attention: str | None = "auto", layout: str = "auto") -> PassPlan:
    """Plan the masked passes for targets predicted at ``positions`` [T] (see :func:`information`).

    Under ``config.information_estimator == "span"`` the variants are the span estimate's shorter
    rows (masked_batches.py), which need the packed layout.

    Raises MemoryBudgetError if a single variant does not fit ``config.memory_budget``; ConfigError
    if the span estimate is asked for where the layout cannot be packed.
    """
    windows = context_windows(n_context, config.window_size, config.window_overlap)
    if len(windows) > 1 and int(positions.min()) < n_context - 1:
        raise ValueError("windowing needs every target after the context (positions >= n_context - 1)")
    implementation = choose_no_grad_attention(adapter.model) if attention == "auto" else attention
    if layout == "auto":
        layout = "packed" if can_pack(adapter) and implementation != FLASH else "rectangular"
    elif layout == "packed" and not can_pack(adapter):
        raise ValueError(f"{adapter.spec.name}: the packed layout needs a model whose attention can be switched")
    span = config.information_span if config.information_estimator == "span" else None
    if span is not None and layout != "packed":
        raise ConfigError(f"information_estimator='span' needs the packed masked passes, which "
                          f"{adapter.spec.name} cannot run here (attention {implementation!r}); use 'exact'")
    window_pos = [window_positions(positions, n_context, w) for w in windows]
    spans = [(w.start, w.stop, int(p.max()) + 1) for w, p in zip(windows, window_pos)]
    # The span estimate recomputes every position from `span` before a window's first target on.
    resumes = [max(int(p.min()) - span, 0) for p in window_pos] if span is not None else None
    budget = MaskedPassBudget(ModelShape.of(adapter.model), config.memory_budget, positions.numel(), n_context - 1,
                              n_windows=len(windows), kl_chunk=KL_CHUNK, build_prefix=not prefix_given)
    tokens = CPU_TOKENS_PER_PASS if adapter.device.type == "cpu" else None
    batches = plan_batches(spans, config.max_batch, budget.fits, budget.describe, tokens_per_pass=tokens, layout=layout,
                           span=span, resumes=resumes)
    return PassPlan(windows, window_pos, batches, budget, implementation, layout)


@torch.no_grad()
def information(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
                n_context: int, mask_vectors: torch.Tensor, orig_log_probs: torch.Tensor, config, *,
                attention: str | None = "auto",
                prefix: PrefixCache | None = None, layout: str = "auto",
                stats: dict | None = None, on_variants=None) -> torch.Tensor:
    """I_i for every target and context token.

    embeds:         [n, d] input embeddings (context + target[:-1])
    target_positions: [T] positions predicting each target
    mask_vectors:   [n_context, d]; row i replaces x_i's input embedding
    orig_log_probs: [T, V] log P_orig of the full input at the targets
    config:         the HETAConfig; its memory_budget (bytes the passes may use, model weights
                    excluded) sizes the batches, max_batch caps the variants per pass, and
                    window_size / window_overlap set the windows over the context (heta_fast/windows.py)
    attention:      "auto" (fused kernel), None (the model's own) or a transformers name
    prefix:         the unmasked input's keys and values for at least [0, n_context - 1), e.g.
                    from the engine's forward pass (:meth:`PrefixCache.from_kv`); None: one
                    extra unmasked pass computes them
    layout:         "packed", "rectangular" or "auto": packed, unless the no-grad attention is
                    FlashAttention-2 or the model's attention cannot be switched; see masked_batches.py
    stats:          if a dict, filled with counts of the work done (token-positions, passes, bytes)
    on_variants(k): if given, called after every masked pass with its number of variants k

    Returns [T, n_context] (float64 for float64 inputs, else float32). Targets predicted before a
    masked token get exactly 0 (causality).
    """
    positions = target_positions.to(embeds.device).long()
    plan = plan_passes(adapter, n_context, positions, config, prefix_given=prefix is not None, attention=attention,
                       layout=layout)
    windows, window_pos, budget, batches = plan.windows, plan.window_positions, plan.budget, plan.batches
    implementation, layout = plan.implementation, plan.layout
    weight, bias, _ = adapter.unembedding(transforms=True)
    _kl_options(adapter)  # refuses up front a logit transform the fused KL cannot apply
    out_dtype = accumulation_dtype(embeds)
    n_targets = positions.numel()
    prefix_length = n_context - 1  # variant i needs [0, i); a window's reference needs [0, stop - 1)

    per_window = [torch.zeros(n_targets, w.size, dtype=out_dtype, device=embeds.device) for w in windows]
    counts = {"prefix_positions": 0, "prefix_passes": 0, "reference_positions": 0, "masked_positions": 0,
              "passes": 0, "max_rows": 0}
    # Packed batches attend through heta_packed; the unmasked passes (prefix, window references)
    # and rectangular batches through the fused no-grad attention.
    batch_attention = PACKED if layout == "packed" else implementation
    with attention_implementation(adapter.model, implementation) as used:
        if prefix is None:
            prefix = PrefixCache.build(adapter, embeds[:prefix_length], budget.prefix_chunk)
            counts.update(prefix_positions=prefix_length, prefix_passes=prefix.passes, passes=prefix.passes)
        inputs = [window_input(embeds, n_context, w) for w in windows]
        refs = []
        for w, win in enumerate(windows):
            refs.append(orig_log_probs if win.stop == n_context else _window_reference(
                adapter, prefix, inputs[w], win, window_pos[w], weight, bias))
            if win.stop != n_context:
                counts["reference_positions"] += n_targets
                counts["passes"] += 1
    with attention_implementation(adapter.model, batch_attention) as used_by_batches:
        for batch in batches:
            w, win = batch.window, windows[batch.window]
            run = _packed_kl if batch.packed else _rectangular_kl
            kl = run(adapter, prefix, inputs[w], batch, window_pos[w], mask_vectors, refs[w], weight, bias)
            per_window[w][:, batch.start - win.start : batch.start - win.start + batch.rows] = kl.t().to(out_dtype)
            counts["passes"] += 1
            counts["masked_positions"] += batch.positions
            counts["max_rows"] = max(counts["max_rows"], batch.rows)
            if on_variants is not None:
                on_variants(batch.rows)
    if stats is not None:
        stats.update(counts, attention=used, batch_attention=used_by_batches, layout=layout, windows=len(windows),
                     batches=len(batches),
                     positions=counts["prefix_positions"] + counts["reference_positions"] + counts["masked_positions"],
                     estimated_peak_bytes=max([budget.batch_bytes(b) for b in batches] + [budget.prefix_bytes()]))
    if len(windows) == 1:
        return per_window[0]
    return average_over_windows(per_window, windows, n_context)


def _packed_kl(adapter: ModelAdapter, prefix: PrefixCache, seq: torch.Tensor, batch: MaskedBatch,
               positions: torch.Tensor, mask_vectors: torch.Tensor, ref: torch.Tensor,
               weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One packed pass of ``batch.rows`` masked variants; seq [N, d] is the window's input. Returns [rows, T]."""
    a, rows = batch.start, batch.rows
    windows = [adapter.window(i) for i in range(len(adapter.layers))]
    packed = PackedVariants.build(seq, batch, mask_vectors[a : a + rows], windows)
    hidden = run_packed(adapter, packed, prefix.for_batch(batch.prefix, 1))  # [Q, d]
    index, valid = packed.rows_at(positions)  # [rows, T]
    target_index = torch.arange(positions.numel(), device=seq.device).repeat(rows)
    kl = vocab_kl(hidden[index.reshape(-1)], weight, ref, target_index, bias, chunk_size=KL_CHUNK,
                  **_kl_options(adapter)).view(rows, -1)
    # A target predicted before the masked token sees no change: exactly 0, as in the reference.
    return torch.where(valid, kl, torch.zeros_like(kl))


def _rectangular_kl(adapter: ModelAdapter, prefix: PrefixCache, seq: torch.Tensor, batch: MaskedBatch,
                    positions: torch.Tensor, mask_vectors: torch.Tensor, ref: torch.Tensor,
                    weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One rectangular pass: every row runs positions start .. start+length-1. Returns [rows, T]."""
    a, rows = batch.start, batch.rows
    masked = torch.arange(a, a + rows, device=seq.device)
    x = seq[a : a + batch.length].expand(rows, -1, -1).clone()  # [rows, L, d]
    x[torch.arange(rows, device=seq.device), masked - a] = mask_vectors[a : a + rows].to(x.dtype)
    hidden = adapter.hidden_states(x, prefix.for_batch(a, rows))  # [rows, L, d]
    rel = (positions - a).clamp(min=0)  # [T]; targets before the start are zeroed below
    picked = hidden[:, rel].reshape(rows * positions.numel(), -1)  # [rows*T, d]
    target_index = torch.arange(positions.numel(), device=seq.device).repeat(rows)
    kl = vocab_kl(picked, weight, ref, target_index, bias, chunk_size=KL_CHUNK, **_kl_options(adapter)).view(rows, -1)
    return torch.where(positions[None, :] >= masked[:, None], kl, torch.zeros_like(kl))


def _window_reference(adapter: ModelAdapter, prefix: PrefixCache, seq: torch.Tensor, window: Window,
                      positions: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """log P_orig [T, V] of a window's input at its targets: positions stop-1 .. on the prefix cache."""
    start = window.stop - 1
    hidden = adapter.hidden_states(seq[None, start : int(positions.max()) + 1], prefix.for_batch(start, 1))[0]
    logits = hidden[positions - start].to(accumulation_dtype(hidden))
    logits = logits @ weight.to(logits.dtype).t()
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    logits = adapter.logit_transform()(logits)  # final-logit scaling / soft-capping, if the model has them
    return torch.log_softmax(logits, dim=-1)


def _kl_options(adapter: ModelAdapter) -> dict:
    """The fused KL's arguments for the model's final-logit transform (refused if it has none)."""
    return adapter.logit_transform().kl_options(vocab_kl, adapter.spec.name)
