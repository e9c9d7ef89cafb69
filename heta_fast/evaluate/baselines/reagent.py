"""ReAGent (Zhao & Shan 2024, "ReAGent: A Model-agnostic Feature Attribution Method for Generative
Language Models"): recursive importance updates from random token replacements.

Implemented from the paper's description, per target token y (input = prompt + earlier target
tokens; only the n prompt tokens are replaced or scored):

1. Importance logits z = 0 (importance s = σ(z) = ½ for every token: uniform).
2. Each step draws ``probes`` random subsets R_b of exactly k = max(1, round(r·n)) prompt
   positions (r = ``replace_ratio``), replaces the tokens of R_b by their auxiliary tokens
   (below) and measures Δp_b = p(y | x) − p(y | x̃_b) (> 0: the replacement hurt the target).
3. Update, once per probe (the recursion; a step's probes are evaluated in one batch):
   z_i ← z_i + Δp_b · (+1 if i ∈ R_b else −1), i.e. z_i += Σ_b Δp_b (2·[i ∈ R_b] − 1). A token
   gains importance when replacing it lowers p(y) and loses it when p(y) drops while it was kept.
4. Stop when keeping only the ⌈``keep_ratio``·n⌉ most important tokens (by the current z; ties
   to the earlier position) and replacing every other token leaves y among the model's
   ``stop_top_k`` most likely next tokens, checked from step ``min_steps`` on; otherwise after
   ``max_steps`` steps.
5. Scores: s = σ(z) normalised to sum 1 over the prompt (non-negative, unsigned).

Draws: one ``torch.Generator`` seeded with the seed (default: the engine's ``seed``, which
``heta-fast eval --seed`` also sets) serves every target row in order; each step draws
u ~ U[0,1)^{probes × n} and R_b = the k positions of row b with the smallest u (argsort).

Auxiliary predictor — NOT the paper's: the paper fills a replaced position with a RoBERTa
masked-LM prediction; no model hub is reachable here, so the attributed model itself predicts
each position from its (original) left context: replacement of x_i = argmax of p(· | x_<i) over
the vocabulary without x_i and the tokenizer's special tokens (position 0, which has no left
context, takes the argmax of the mean next-token distribution over the prompt). One forward of
the prompt computes every replacement, so a replacement is fixed per position and the only
randomness is which positions are replaced.

Cost per target token: 2 forwards (auxiliary predictions, p(y | x)) + steps × probes sequences
+ one stopping-check sequence per step from ``min_steps`` on (it goes through the model with that
step's probes, ``max_batch`` sequences at a time); at most
2 + ``max_steps`` · ``probes`` + (``max_steps`` − ``min_steps``) sequences.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ...errors import ConfigError
from ...model.exclusive import holding_the_model
from ...result import Attribution
from ..forward import as_model, embed, next_token_probs
from .common import make_result, prepare

REPLACE_RATIO = 0.3  # fraction r of the prompt replaced by each probe (the paper's r)
PROBES = 16  # replacement samples (= updates) per step, evaluated in one batch
MAX_STEPS = 20  # update steps when the stopping condition never holds
MIN_STEPS = 10  # steps before the stopping condition is first checked (uniform scores would pass it trivially)
KEEP_RATIO = 0.1  # stopping condition: keep this fraction of the prompt (the most important tokens) ...
STOP_TOP_K = 3  # ... and stop when the target is among the model's top-k predictions
AUXILIARY = "attributed model, left-context argmax (not the paper's RoBERTa MLM)"


@dataclass(frozen=True)
class ReagentOptions:
    """ReAGent's hyperparameters (module docstring; defaults: the module constants)."""

    replace_ratio: float = REPLACE_RATIO
    probes: int = PROBES
    max_steps: int = MAX_STEPS
    min_steps: int = MIN_STEPS
    keep_ratio: float = KEEP_RATIO
    stop_top_k: int = STOP_TOP_K

    def __post_init__(self) -> None:
        if not (0 < self.replace_ratio <= 1 and 0 < self.keep_ratio <= 1):
            raise ConfigError("reagent: replace_ratio and keep_ratio must be in (0, 1]")
        if self.probes < 1 or self.max_steps < 1 or self.stop_top_k < 1 or not 0 <= self.min_steps <= self.max_steps:
            raise ConfigError("reagent: probes, max_steps and stop_top_k must be >= 1 and 0 <= min_steps <= max_steps")


@dataclass
class ReagentRow:
    """One target row: scores [n] (σ(z) normalised), steps taken, whether the stopping condition held."""

    scores: torch.Tensor
    steps: int
    stopped: bool


@torch.no_grad()
def auxiliary_tokens(model, context_ids: torch.Tensor, banned=()) -> torch.Tensor:
    """context_ids [n] -> replacement ids [n]: position i gets argmax p(· | x_<i) without x_i and
    ``banned`` ids; position 0 the argmax of the mean next-token distribution over the prompt."""
    lm = as_model(model)
    x = embed(model, context_ids)
    logits = lm(inputs_embeds=x[None], use_cache=False).logits[0].double()  # [n, V]: row i predicts x_{i+1}
    probs = torch.softmax(logits, dim=-1).cpu()
    dist = torch.cat([probs.mean(0, keepdim=True), probs[:-1]])  # [n, V]: the distribution for position i
    dist[:, [int(b) for b in banned if 0 <= int(b) < dist.shape[1]]] = -1.0
    dist[torch.arange(len(context_ids)), context_ids.cpu()] = -1.0
    return dist.argmax(-1)


def replace(input_ids: torch.Tensor, replaced: torch.Tensor, aux_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [L], replaced [B, n] bool (n ≤ L), aux_ids [n] -> [B, L] with replaced tokens swapped."""
    n = replaced.shape[1]
    out = input_ids.repeat(replaced.shape[0], 1)
    out[:, :n] = torch.where(replaced, aux_ids[None], out[:, :n])
    return out


def _probs(model, ids: torch.Tensor, max_batch: int) -> torch.Tensor:
    """ids [B, L] -> next-token probabilities at the last position [B, V] (float64).

    The lookup keeps the [B, L] shape (not one flat [B·L] lookup), so that a hook on the
    input-embedding module sees each sequence's [L, d] rows, as the robustness study's noise does."""
    return next_token_probs(model, embed(model, ids), max_batch)


def reagent_row(model, input_ids: torch.Tensor, n_attr: int, target: int, aux_ids: torch.Tensor,
                options: ReagentOptions, generator: torch.Generator, max_batch: int = 32) -> ReagentRow:
    """ReAGent for one target: input_ids [L] (its last position predicts ``target``), the first
    ``n_attr`` positions scored, aux_ids [n_attr] their replacements -> scores [n_attr]."""
    input_ids, aux_ids = input_ids.cpu(), aux_ids.cpu()
    n = n_attr
    k = max(1, min(n, round(options.replace_ratio * n)))
    keep = max(1, math.ceil(options.keep_ratio * n))
    p0 = float(_probs(model, input_ids[None], max_batch)[0, target])
    z = torch.zeros(n, dtype=torch.float64)
    for step in range(options.max_steps):
        u = torch.rand(options.probes, n, generator=generator, dtype=torch.float64)
        replaced = torch.zeros(options.probes, n, dtype=torch.bool)
        replaced.scatter_(1, u.argsort(dim=1)[:, :k], True)
        check = step >= options.min_steps
        if check:  # the stopping check rides in the probes' batch: replace all but the top `keep`
            kept = torch.zeros(1, n, dtype=torch.bool)
            kept[0, torch.argsort(z, descending=True, stable=True)[:keep]] = True
            replaced = torch.cat([replaced, ~kept])
        probs = _probs(model, replace(input_ids, replaced, aux_ids), max_batch)
        if check and _in_top_k(probs[-1], target, options.stop_top_k):
            return ReagentRow(_normalised(z), step, True)
        delta = p0 - probs[: options.probes, target]  # [probes]
        replaced = replaced[: options.probes]
        z += (delta[:, None] * (2.0 * replaced.double() - 1.0)).sum(0)
    return ReagentRow(_normalised(z), options.max_steps, False)


def _in_top_k(probs: torch.Tensor, target: int, k: int) -> bool:
    """Whether ``target`` is among the k most likely tokens of probs [V] (ties count for it)."""
    return int((probs > probs[target]).sum()) < k


def _normalised(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s / s.sum()


@holding_the_model
def reagent(attributor, prompt, target, seed: int | None = None, options: ReagentOptions | None = None) -> Attribution:
    """ReAGent scores per token (non-negative, each row sums to 1); see the module docstring.

    seed: of every random draw (default: ``attributor.config.seed``). The result's config records
    the options, the auxiliary predictor, and per target the steps taken and whether the stopping
    condition held.
    """
    clock = time.perf_counter()
    options = options or ReagentOptions()
    seed = attributor.config.seed if seed is None else int(seed)
    prep = prepare(attributor, prompt, target)
    req, adapter = prep.request, attributor.adapter
    aux = auxiliary_tokens(adapter, req.context_ids, getattr(attributor.tokenizer, "all_special_ids", ()))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in range(req.target_ids.numel()):
        ids = torch.cat([req.context_ids, req.target_ids[:t]])
        rows.append(reagent_row(adapter, ids, req.n_context, int(req.target_ids[t]), aux, options, gen,
                                attributor.config.max_batch))
    scores = torch.stack([r.scores for r in rows])
    return make_result(attributor, prep, scores, "reagent", time.perf_counter() - clock,
                       config={**asdict(options), "seed": seed, "auxiliary": AUXILIARY,
                               "auxiliary_tokens": aux.tolist(), "steps": [r.steps for r in rows],
                               "stopped": [r.stopped for r in rows]})
