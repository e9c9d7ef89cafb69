"""Faithfulness and alignment metrics of one attribution row.

Conventions shared by every model-based metric here:

- ``model``: a transformers causal LM or a :class:`heta_fast.model.adapter.ModelAdapter`;
- ``input_ids`` [n]: the input sequence; its last position predicts the target token;
- ``target``: the target token id (used by the hard metrics; the soft metrics compare whole
  next-token distributions);
- ``scores`` [n_attr], n_attr ≤ n: the attribution of the first n_attr input positions (the
  prompt). Positions ≥ n_attr (earlier target tokens of a multi-token target) are
  conditioning and are never erased;
- erasing means multiplying input-embedding elements by zero; positions never move.

Sources: Soft-NS / Soft-NC — Zhao & Aletras (2023), "Incorporating Attribution Importance for
Improving Faithfulness Metrics" (ACL), as adapted to generation in ReAGent (Zhao & Shan, 2024,
"ReAGent: A Model-agnostic Feature Attribution Method for Generative Language Models"): full
next-token distributions compared with the Hellinger distance. Hard comprehensiveness /
sufficiency — DeYoung et al. (2020), ERASER, in the AOPC form over top-k fractions. DSA and F1
alignment — Pramanik et al. (2026), HETA, §5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..divergence import kl_divergence
from ..model.exclusive import holding_the_model
from .forward import embed, next_token_probs

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3)
# Below this, 1 − S₀ is treated as zero: erasing the whole prompt does not change the output,
# so no attribution of it can be more or less faithful than another (both scores are 0).
_EPS = 1e-12


# ----------------------------------------------------------------------------- helpers
def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """D(p, q) = ‖√p − √q‖₂ / √2 over the last axis, in [0, 1]. p, q [..., V] probabilities."""
    d = (p.double().clamp_min(0).sqrt() - q.double().clamp_min(0).sqrt()).norm(dim=-1) / math.sqrt(2.0)
    return d.clamp(0.0, 1.0)


def normalise_unit(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1]: q_i = (s_i − min s) / (max s − min s), float64.

    Constant scores rank nothing and map to all zeros (a Soft-S mask then erases every token
    and a Soft-C mask keeps every token: such an attribution scores Soft-NS = Soft-NC = 0).
    """
    s = scores.detach().double().cpu().flatten()
    lo, hi = s.min(), s.max()
    if not hi > lo:
        return torch.zeros_like(s)
    return (s - lo) / (hi - lo)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; ties keep position order (stable sort)."""
    return torch.sort(scores.detach().double().cpu().flatten(), descending=True, stable=True).indices


def top_count(n: int, fraction: float) -> int:
    """k = max(1, ⌊fraction · n⌋): how many tokens a top-k fraction removes or keeps."""
    return max(1, int(math.floor(fraction * n + 1e-9)))


def _check(input_ids: torch.Tensor, scores: torch.Tensor) -> int:
    n_attr = int(scores.numel())
    if input_ids.dim() != 1 or scores.dim() != 1:
        raise ValueError("input_ids and scores must be 1-D")
    if not 1 <= n_attr <= input_ids.numel():
        raise ValueError(f"scores cover {n_attr} positions of an input of {input_ids.numel()}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return n_attr


# ----------------------------------------------------------------------------- Soft-NS / Soft-NC
@dataclass(frozen=True)
class SoftFaithfulness:
    """Soft-NS, Soft-NC and the quantities they are made of (all floats)."""

    soft_ns: float
    soft_nc: float
    sufficiency: float        # Soft-S = 1 − mean_k D(p, p_S^(k))
    comprehensiveness: float  # Soft-C = mean_k D(p, p_C^(k))
    s0: float                 # S₀ = 1 − D(p, p_∅), sufficiency of the all-erased prompt


@holding_the_model
@torch.no_grad()
def soft_faithfulness(model, input_ids: torch.Tensor, target: int | None, scores: torch.Tensor, *,
                      samples: int = 10, seed: int = 0, max_batch: int = 32) -> SoftFaithfulness:
    """Soft-NS and Soft-NC of one attribution row (Zhao & Aletras 2023; ReAGent's generation form).

    q = normalise_unit(scores) ∈ [0, 1]^{n_attr}. For k = 1..K (K = ``samples``), a keep-mask is
    drawn for every element of every prompt-token embedding:
        Soft-S: m^(k)_{i,e} ~ Bernoulli(q_i),      x_S^(k) = x ⊙ m^(k)
        Soft-C: m^(k)_{i,e} ~ Bernoulli(1 − q_i),  x_C^(k) = x ⊙ m^(k)
    (one ``torch.Generator`` seeded with ``seed`` draws u ~ U[0,1) of shape [K, n_attr, d] for
    Soft-S, then another for Soft-C; an element is kept when u < its keep probability).
    With p, p' the next-token distributions at the last position and
    D(p, p') = ‖√p − √p'‖₂ / √2 (Hellinger):
        S = 1 − mean_k D(p, p_S^(k)),   C = mean_k D(p, p_C^(k)),   S₀ = 1 − D(p, p_∅)
    where p_∅ erases every prompt token entirely. Then
        Soft-NS = max(0, S − S₀) / (1 − S₀),   Soft-NC = C / (1 − S₀)
    (both 0 when 1 − S₀ = 0). Higher is better for both.
    """
    n_attr = _check(input_ids, scores)
    if samples < 1:
        raise ValueError("samples must be >= 1")
    x = embed(model, input_ids)  # [n, d]
    q = normalise_unit(scores)
    gen = torch.Generator().manual_seed(int(seed))
    shape = (samples, n_attr, x.shape[-1])
    keep_s = torch.rand(shape, generator=gen, dtype=torch.float64) < q[None, :, None]
    keep_c = torch.rand(shape, generator=gen, dtype=torch.float64) < (1.0 - q)[None, :, None]

    empty = x.clone()
    empty[:n_attr] = 0
    batch = [x[None], empty[None]]
    for keep in (keep_s, keep_c):
        variants = x.unsqueeze(0).repeat(samples, 1, 1)
        variants[:, :n_attr] = variants[:, :n_attr] * keep.to(device=x.device, dtype=x.dtype)
        batch.append(variants)
    probs = next_token_probs(model, torch.cat(batch), max_batch)  # [2 + 2K, V]
    dist = hellinger(probs[:1], probs[1:])  # [1 + 2K]
    s0 = float(1.0 - dist[0])
    suff = float(1.0 - dist[1 : 1 + samples].mean())
    comp = float(dist[1 + samples :].mean())
    denom = 1.0 - s0
    if denom <= _EPS:
        return SoftFaithfulness(0.0, 0.0, suff, comp, s0)
    return SoftFaithfulness(soft_ns=max(0.0, suff - s0) / denom, soft_nc=comp / denom,
                            sufficiency=suff, comprehensiveness=comp, s0=s0)


def soft_ns(model, input_ids: torch.Tensor, target: int | None, scores: torch.Tensor, *,
            samples: int = 10, seed: int = 0, max_batch: int = 32) -> float:
    """Soft normalised sufficiency: max(0, S − S₀)/(1 − S₀); see :func:`soft_faithfulness`."""
    return soft_faithfulness(model, input_ids, target, scores, samples=samples, seed=seed,
                             max_batch=max_batch).soft_ns


def soft_nc(model, input_ids: torch.Tensor, target: int | None, scores: torch.Tensor, *,
            samples: int = 10, seed: int = 0, max_batch: int = 32) -> float:
    """Soft normalised comprehensiveness: C/(1 − S₀); see :func:`soft_faithfulness`."""
    return soft_faithfulness(model, input_ids, target, scores, samples=samples, seed=seed,
                             max_batch=max_batch).soft_nc


# ----------------------------------------------------------------------------- hard (AOPC) metrics
MEASURES = ("prob", "log_prob", "kl")


@dataclass(frozen=True)
class HardFaithfulness:
    """AOPC-style comprehensiveness and sufficiency, and their per-fraction values."""

    comprehensiveness: float
    sufficiency: float
    per_fraction: dict


@holding_the_model
@torch.no_grad()
def hard_faithfulness(model, input_ids: torch.Tensor, target: int, scores: torch.Tensor, *,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS, measure: str = "prob",
                      max_batch: int = 32) -> HardFaithfulness:
    """Comprehensiveness and sufficiency over top-k fractions (DeYoung et al. 2020, AOPC form).

    For each fraction f, k = max(1, ⌊f · n_attr⌋) prompt tokens with the highest scores (ties by
    position) are erased (comprehensiveness) or are the only ones kept (sufficiency). With
    ``measure="prob"`` the change is the drop of the target's probability, p(y|x) − p(y|x');
    with ``measure="log_prob"`` the drop of its log-probability, log p(y|x) − log p(y|x')
    (informative when the target is unlikely: a probability of 1e-4 can only drop by 1e-4);
    with ``measure="kl"`` it is KL(p ‖ p') over the vocabulary. Both are averaged over fractions.
    Comprehensiveness: higher is better; sufficiency: lower is better.

    This is the quantity the published HETA code reports (with KL) under the names Soft-NC / Soft-NS.
    """
    n_attr = _check(input_ids, scores)
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose from {MEASURES}")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError("fractions must be a non-empty list of numbers in (0, 1]")
    x = embed(model, input_ids)
    order = ranking(scores)
    batch = [x[None]]
    for f in fractions:
        top = order[: top_count(n_attr, f)].to(x.device)
        removed = x.clone()
        removed[top] = 0
        kept = x.clone()
        rest = torch.ones(n_attr, dtype=torch.bool, device=x.device)
        rest[top] = False
        kept[:n_attr][rest] = 0
        batch += [removed[None], kept[None]]
    probs = next_token_probs(model, torch.cat(batch), max_batch)
    full, changed = probs[0], probs[1:]
    if measure == "prob":
        change = full[target] - changed[:, target]
    elif measure == "log_prob":
        change = full[target].clamp_min(1e-300).log() - changed[:, target].clamp_min(1e-300).log()
    else:
        change = _kl(full, changed)
    comp, suff = change[0::2], change[1::2]
    per = {f: {"comprehensiveness": float(c), "sufficiency": float(s)} for f, c, s in zip(fractions, comp, suff)}
    return HardFaithfulness(float(comp.mean()), float(suff.mean()), per)


def comprehensiveness(model, input_ids: torch.Tensor, target: int, scores: torch.Tensor, *,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS, measure: str = "prob",
                      max_batch: int = 32) -> float:
    """Mean over fractions of the change when the top-k tokens are erased; see :func:`hard_faithfulness`."""
    return hard_faithfulness(model, input_ids, target, scores, fractions=fractions, measure=measure,
                             max_batch=max_batch).comprehensiveness


def sufficiency(model, input_ids: torch.Tensor, target: int, scores: torch.Tensor, *,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, measure: str = "prob",
                max_batch: int = 32) -> float:
    """Mean over fractions of the change when only the top-k tokens are kept; see :func:`hard_faithfulness`."""
    return hard_faithfulness(model, input_ids, target, scores, fractions=fractions, measure=measure,
                             max_batch=max_batch).sufficiency


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q_b) for each row q_b; 0·log 0 = 0. p [V], q [B, V] -> [B]."""
    p = p[None]
    return kl_divergence(p.clamp_min(1e-300).log(), q.clamp_min(1e-300).log(), p=p)


# ----------------------------------------------------------------------------- alignment metrics
def dsa(scores: torch.Tensor, relevant: Sequence[int], distractor: Sequence[int]) -> float:
    """Dependent Sentence Attribution (HETA §5.1): mass(relevant) − mass(distractor).

    scores [n] are normalised to sum 1 (DSA is 0.0 when their total is not positive);
    relevant / distractor are token indices of the answer-bearing support segment and of the
    distractor segment. In [−1, 1] for non-negative scores; higher is better.
    """
    s = scores.detach().double().cpu().flatten()
    total = float(s.sum())
    if not total > 0:
        return 0.0
    s = s / total
    rel = float(s[list(relevant)].sum()) if len(relevant) else 0.0
    dis = float(s[list(distractor)].sum()) if len(distractor) else 0.0
    return rel - dis


def f1_alignment(scores: torch.Tensor, gold: Sequence[int], top_k: int | None = None) -> float:
    """Set F1 between the top-k indices by score and the gold indices (HETA §5.3).

    top_k defaults to |gold|; ties are broken by position. 0.0 when gold is empty or nothing matches.
    """
    gold_set = {int(g) for g in gold}
    s = scores.detach().double().cpu().flatten()
    if not gold_set or s.numel() == 0:
        return 0.0
    k = len(gold_set) if top_k is None else int(top_k)
    k = max(0, min(k, s.numel()))
    predicted = set(ranking(s)[:k].tolist())
    tp = len(predicted & gold_set)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(predicted), tp / len(gold_set)
    return 2 * precision * recall / (precision + recall)
