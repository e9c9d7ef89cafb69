"""Robustness of attributions (the HETA paper's robustness studies; issue 17 §6).

Paraphrase: the curated record's support segment is replaced by a hand-written active/passive
rewrite (``data/paraphrase_curated.json``); both prompts are attributed with the same method and
target, each content word present in both segments gets the sum of its tokens' score magnitudes
(every sub-word piece, every whole-word occurrence in the segment; signed methods count |s| as
DSA and F1 do), and the agreement is the Spearman correlation of those word scores.

Embedding noise: Gaussian noise ε_i ~ N(0, (scale · rms_i)² I) is added to every input-embedding
row x_i (rms_i = ‖x_i‖₂ / √d, so ‖ε_i‖ / ‖x_i‖ ≈ scale) and the input is attributed again. The
noise enters through a forward hook on the model's input-embedding module
(:func:`perturbed_embeddings`): the engine and every baseline embed their input by calling that
module (``ModelAdapter.embed``), so each method sees exactly the same perturbed input without any
of them being changed; the hook adds the noise only to outputs whose last two dimensions are the
input's ``[n, d]`` (a mask vector embedded from one pad/unk id is left alone) and is removed on
leaving the block. The change is reported as 1 − Spearman between the clean and noisy rows and as
the total-variation distance between their normalised magnitudes (½ Σ_i |p_i − q_i|,
p = |s| / Σ|s|; 0 = the same mass distribution, 1 = disjoint).

Decoding hyperparameters: the record's prompt (plain, or through the chat template when the caller
passes :func:`heta_fast.evaluate.data.chat_example`'s rewrite) is answered greedily (the reference)
and, for every decoding setting × seed, by sampling (:mod:`heta_fast.evaluate.sampling`); the FIRST token of
each answer is attributed with every method and scored with the six metrics of
:mod:`heta_fast.evaluate.metrics` (:func:`heta_fast.evaluate.runner.score_attribution`, the evaluation's
default settings). With the prompt fixed, an attribution and its metrics depend only on (record,
target token, method), so they are computed once per distinct token (:class:`TokenCache`); a
setting changes the numbers only through which first tokens it draws.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import InputError
from ..model.exclusive import lock_of
from ..request import tokenize_target
from .data import EvalExample, _read_json, _word_occurrences
from .methods import run_methods
from .sampling import Decoding, decode, generator_for
from .spans import Span, token_offsets, tokens_in

NOISE_SCALES = (0.01, 0.1, 0.5)
# One factor at a time around the base (temperature 1, top-p 1, top-k off, repetition penalty 1).
DECODING_GRID = ("temperature=0.7", "temperature=1.0", "temperature=1.3", "top_p=0.9", "top_k=50",
                 "repetition_penalty=1.2")
DECODING_SEEDS = (0, 1, 2)


# ----------------------------------------------------------------------------- rank statistics
def ranks(x: torch.Tensor) -> torch.Tensor:
    """x [n] -> ranks 1..n [n] (float64), tied values share the mean of their ranks."""
    x = x.detach().double().flatten()
    order = torch.argsort(x, stable=True)
    out = torch.empty_like(x)
    sorted_x = x[order]
    start = 0
    n = x.numel()
    while start < n:
        stop = start + 1
        while stop < n and sorted_x[stop] == sorted_x[start]:
            stop += 1
        out[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman correlation of a [n] and b [n] (Pearson of mid-ranks); None when either is constant."""
    if a.numel() != b.numel():
        raise InputError(f"spearman needs equal lengths, got {a.numel()} and {b.numel()}")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return None if denom == 0.0 else float((ra * rb).sum()) / denom


def attribution_change(clean: torch.Tensor, noisy: torch.Tensor) -> dict:
    """clean [n], noisy [n] -> {"rank_change": 1 − Spearman (None if undefined), "mass_change": TV of |s| / Σ|s|}."""
    rho = spearman(clean, noisy)
    p, q = clean.detach().double().abs(), noisy.detach().double().abs()
    if float(p.sum()) == 0.0 or float(q.sum()) == 0.0:
        tv = None
    else:
        tv = 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())
    return {"rank_change": None if rho is None else 1.0 - rho, "mass_change": tv}


# ----------------------------------------------------------------------------- paraphrase data
@dataclass(frozen=True)
class Paraphrase:
    """A support segment, its rewrite, the records using it and the content words of both."""

    source_ids: tuple[str, ...]
    original: str
    rewritten: str
    content_words: tuple[str, ...]


def load_paraphrases(path: str | Path) -> list[Paraphrase]:
    """The paraphrase file (``{"paraphrases": [{source_ids, original, rewritten, content_words}]}``),
    checked: the rewrite differs, and every content word occurs (whole word, any case) equally often,
    at least once, in the original and the rewrite."""
    path = Path(path)
    data = _read_json(path)
    items = data.get("paraphrases") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected a JSON object with a non-empty 'paraphrases' list")
    out = []
    for k, item in enumerate(items):
        where = f"{path}: paraphrase {k}"
        try:
            p = Paraphrase(tuple(item["source_ids"]), item["original"], item["rewritten"],
                           tuple(w.lower() for w in item["content_words"]))
        except (KeyError, TypeError, AttributeError):
            raise InputError(f"{where}: needs source_ids, original, rewritten and content_words") from None
        if p.original == p.rewritten or not p.source_ids or not p.content_words:
            raise InputError(f"{where}: needs source ids, content words and a rewrite that differs")
        for word in p.content_words:
            counts = [len(_word_occurrences(s, [word], None)) for s in (p.original, p.rewritten)]
            if counts[0] == 0 or counts[0] != counts[1]:
                raise InputError(f"{where}: content word {word!r} occurs {counts[0]} times in the original "
                                 f"and {counts[1]} times in the rewrite")
        out.append(p)
    return out


def paraphrased(ex: EvalExample, p: Paraphrase) -> EvalExample:
    """The example with its support segment (which must read ``p.original``) replaced by the rewrite.

    Only the prompt and the support span change; the distractor and gold spans are dropped (they
    would move).
    """
    if ex.support is None or ex.prompt[ex.support[0]: ex.support[1]] != p.original:
        raise InputError(f"example {ex.id}: its support segment is not the paraphrase's original")
    a, b = ex.support
    prompt = ex.prompt[:a] + p.rewritten + ex.prompt[b:]
    return replace(ex, prompt=prompt, support=(a, a + len(p.rewritten)), distractor=None, gold=())


def word_scores(tokenizer, prompt: str, context_ids: Sequence[int], row: torch.Tensor, segment: Span,
                words: Sequence[str]) -> list[float]:
    """row [n_context] -> per word: Σ |s| over the tokens of its whole-word occurrences in ``segment``."""
    offsets = token_offsets(tokenizer, prompt, context_ids)
    mag = row.detach().double().abs()
    out = []
    for word in words:
        idx = tokens_in(prompt, offsets, _word_occurrences(prompt, [word], segment))
        if not idx:
            raise InputError(f"content word {word!r} has no token in the segment")
        out.append(float(mag[idx].sum()))
    return out


def target_ids(attributor, ex: EvalExample) -> torch.Tensor:
    """The example's target token ids [T] (its first ``target_tokens``), as the evaluation runner takes them."""
    ids = tokenize_target(attributor.tokenizer, ex.target, attributor.adapter.vocab_size)
    return ids if ex.target_tokens is None else ids[: ex.target_tokens]


def paraphrase_agreement(attributor, ex: EvalExample, p: Paraphrase, methods: Sequence[str],
                         ig_steps: int = 32) -> dict[str, dict]:
    """Per method: the Spearman of the content words' scores, original against rewritten prompt
    (first target row), with both word-score lists and the attribution seconds."""
    rewritten = paraphrased(ex, p)
    target = target_ids(attributor, ex)
    runs = [run_methods(attributor, e.prompt, target, methods, ig_steps=ig_steps) for e in (ex, rewritten)]
    out = {}
    for m in methods:
        scores = [word_scores(attributor.tokenizer, e.prompt, r[m].context_ids, r[m].scores[0], e.support,
                              p.content_words) for e, r in zip((ex, rewritten), runs)]
        rho = spearman(torch.tensor(scores[0]), torch.tensor(scores[1]))
        out[m] = {"spearman": rho, "words": list(p.content_words), "original": scores[0], "rewritten": scores[1],
                  "seconds": [float(r[m].timings.get("total", 0.0)) for r in runs]}
    return out


# ----------------------------------------------------------------------------- embedding noise
def embedding_noise(embeds: torch.Tensor, scale: float, seed: int, key: str = "") -> torch.Tensor:
    """embeds [n, d] -> noise [n, d], row i ~ N(0, (scale · ‖x_i‖/√d)² I).

    One standard-normal draw per (seed, key) (CPU generator, float64), scaled: every scale of one
    record perturbs in the same direction, and every method sees the same noise.
    """
    if scale < 0:
        raise InputError(f"noise scale must be >= 0, got {scale}")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8")))
    z = torch.randn(embeds.shape, generator=g, dtype=torch.float64)
    rms = embeds.detach().double().cpu().pow(2).mean(-1, keepdim=True).sqrt()  # [n, 1]
    return (scale * rms * z).to(device=embeds.device, dtype=embeds.dtype)


@contextmanager
def perturbed_embeddings(model, noise: torch.Tensor) -> Iterator[None]:
    """Inside the block, the input-embedding module of ``model`` returns embedding + noise [n, d]
    for every lookup of n tokens (outputs [..., n, d]); the hook is removed on leaving. The block
    holds the model's lock (heta_fast/model/exclusive.py), so that no other thread's pass runs
    with the noise."""

    def add_noise(module, args, output):
        if output.shape[-2:] == noise.shape:
            return output + noise.to(device=output.device, dtype=output.dtype)
        return output

    with lock_of(model):
        handle = model.get_input_embeddings().register_forward_hook(add_noise)
        try:
            yield
        finally:
            handle.remove()


def noise_sensitivity(attributor, ex: EvalExample, methods: Sequence[str], scales: Sequence[float] = NOISE_SCALES,
                      seed: int = 0, ig_steps: int = 32) -> dict[str, dict]:
    """Per method and scale: :func:`attribution_change` of the first target row, clean against noisy."""
    target = target_ids(attributor, ex)
    clean = run_methods(attributor, ex.prompt, target, methods, ig_steps=ig_steps)
    ids = torch.tensor(clean[methods[0]].context_ids + target[:-1].tolist())
    embeds = attributor.adapter.embed(ids)  # [n, d]: the model input of every method
    out = {m: {"seconds": float(clean[m].timings.get("total", 0.0))} for m in methods}
    for scale in scales:
        with perturbed_embeddings(attributor.model, embedding_noise(embeds, scale, seed, ex.id)):
            noisy = run_methods(attributor, ex.prompt, target, methods, ig_steps=ig_steps)
        for m in methods:
            out[m][str(scale)] = attribution_change(clean[m].scores[0], noisy[m].scores[0])
    return out


# ----------------------------------------------------------------------------- decoding hyperparameters
class TokenCache:
    """Attribution metrics by (record, target token id, method), computed at most once.

    ``entries`` maps record id -> {str(token id): {"text", "p", "methods": {method: cell}}} (the
    results file's ``tokens`` section, so a rerun reuses what an earlier run computed);
    ``computed`` counts the (record, token, method) cells computed here.
    """

    def __init__(self, entries: dict | None = None):
        self.entries = entries if entries is not None else {}
        self.computed = 0

    def get(self, attributor, prep, token: int, methods: Sequence[str], settings) -> dict:
        """{method: {"metrics", "first_mass", "seconds"}} of ``token`` attributed after ``prep``'s context."""
        from .runner import score_attribution

        entry = self.entries.setdefault(prep.example.id, {}).setdefault(str(int(token)), {})
        if "text" not in entry:
            entry["text"] = attributor.tokenizer.decode([int(token)])
        cells = entry.setdefault("methods", {})
        pending = [m for m in methods if m not in cells]
        if pending:
            one = replace(prep, target_ids=torch.tensor([int(token)], dtype=torch.long))
            results = run_methods(attributor, prep.example.prompt, one.target_ids, pending, ig_steps=settings.ig_steps)
            for m in pending:
                scored = score_attribution(attributor, one, results[m], settings)
                cells[m] = {"metrics": scored["metrics"], "first_mass": scored["diagnostics"].get("first_mass"),
                            "seconds": float(results[m].timings.get("total", 0.0))}
                self.computed += 1
        return {m: cells[m] for m in methods}


def decoding_sensitivity(attributor, ex: EvalExample, methods: Sequence[str],
                         grid: Sequence[str | Decoding] = DECODING_GRID, seeds: Sequence[int] = DECODING_SEEDS,
                         settings=None, max_new_tokens: int = 16, cache: TokenCache | None = None) -> dict:
    """One record of the decoding study: the greedy answer and every (setting, seed)'s sampled answer
    to ``ex.prompt``, each first token attributed with every method (through ``cache``).

    Returns {"greedy": draw, "draws": {setting: {seed: draw}}, "distinct_tokens": k, "computed": c}
    with draw = {"token", "text" (the answer), "contains_gold"}; the metrics are in
    ``cache.entries[ex.id]`` (``computed``: how many (token, method) cells this call computed).
    """
    from .answer import contains_answer, stop_ids
    from .runner import EvalSettings, prepare_example

    settings = settings or EvalSettings()
    cache = cache if cache is not None else TokenCache()
    before = cache.computed
    prep = prepare_example(attributor, ex)
    adapter, tok = attributor.adapter, attributor.tokenizer
    room = max_new_tokens if adapter.max_length is None else min(max_new_tokens,
                                                                   adapter.max_length - prep.context_ids.numel())
    if room < 1:
        raise InputError(f"record {ex.id}: the prompt leaves no room for an answer")
    stop, gold = stop_ids(attributor), ex.meta.get("answer", ex.target)

    def draw(decoding: Decoding, seed: int | None) -> dict:
        gen = None if seed is None else generator_for(seed, ex.id)
        answer = decode(adapter, prep.context_ids, room, stop, decoding, gen)
        token = int(answer.ids[0])
        text = tok.decode(answer.ids.tolist(), skip_special_tokens=True)
        cache.get(attributor, prep, token, methods, settings)
        cache.entries[ex.id][str(token)]["p"] = float(answer.first_probs[token])
        return {"token": token, "text": text, "contains_gold": contains_answer(text, gold)}

    out = {"greedy": draw(Decoding("greedy", temperature=0.0), None), "draws": {}}
    for setting in grid:
        decoding = setting if isinstance(setting, Decoding) else Decoding.parse(setting)
        out["draws"][decoding.name] = {str(seed): draw(decoding, seed) for seed in seeds}
    out["distinct_tokens"] = len(cache.entries[ex.id])
    out["computed"] = cache.computed - before
    return out


def _decoding_values(record: dict, method: str, metric: str, cells: list[tuple[str, str]]) -> list[float] | None:
    """[greedy, cell_1, ...]: the metric of each draw's first token, or None if any is missing."""
    tokens = record["tokens"]
    draws = [record["greedy"]] + [record["draws"][s][seed] for s, seed in cells]
    out = []
    for d in draws:
        cell = tokens.get(str(d["token"]), {}).get("methods", {}).get(method)
        value = None if cell is None else cell["metrics"].get(metric)
        if value is None:
            return None
        out.append(float(value))
    return out


def _max_relative(values: torch.Tensor) -> torch.Tensor:
    """values [..., R, 1 + C] (greedy first) -> (means [..., 1 + C], relative changes [..., C], their max [...]).

    relative change = |mean_cell − mean_greedy| / |mean_greedy| (inf when the greedy mean is 0)."""
    means = values.mean(-2)
    rel = (means[..., 1:] - means[..., :1]).abs() / means[..., :1].abs()
    return means, rel, rel.amax(-1)


def decoding_summary(records: dict, methods: Sequence[str], metrics: Sequence[str], settings: Sequence[str],
                     seeds: Sequence[int | str], resamples: int = 2000, seed: int = 0) -> dict:
    """The decoding study's numbers from its per-record results (``records``: id -> record of
    :func:`decoding_sensitivity` plus its ``tokens`` cache entry).

    Per method and metric, over the records holding every needed value: ``greedy`` (the mean of
    the greedy first token's metric over records), ``cells`` {setting: {seed: {"mean", "relative"}}}
    with relative = |mean − greedy| / |greedy|, ``max`` (the largest relative change over the grid:
    the paper's number; inf or nan when the greedy mean is 0) with the (setting, seed) attaining it
(None then), ``ci`` (95% percentile bootstrap of
    that maximum, records resampled with replacement, ``resamples`` times, ``seed``), ``records``;
    ``versus_heta`` {method: {"diff": max_method − max_heta, "ci"}} on the records both hold (paired:
    the same resampled records for both). ``tokens``: per setting, the share of (record, seed) draws
    whose first token differs from the greedy one and the mean number of distinct first tokens per
    record (greedy included).
    """
    cells = [(s, str(k)) for s in settings for k in seeds]
    out: dict = {"metrics": {}, "tokens": {}}
    values: dict = {}
    for m in methods:
        for metric in metrics:
            rows = {rid: v for rid, rec in records.items()
                    if (v := _decoding_values(rec, m, metric, cells)) is not None}
            values[m, metric] = rows
            if not rows:
                continue
            t = torch.tensor(list(rows.values()), dtype=torch.float64)  # [R, 1 + C]
            means, rel, top = _max_relative(t)
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(len(rows), (resamples, len(rows)), generator=g)
            boot = _max_relative(t[idx])[2]
            arg = cells[int(rel.argmax())] if bool(torch.isfinite(top)) else None  # greedy mean 0: undefined
            out["metrics"][m, metric] = {
                "records": len(rows), "greedy": float(means[0]), "max": float(top), "argmax": arg,
                "ci": _interval(boot),
                "cells": {s: {k: {"mean": float(means[1 + i]), "relative": float(rel[i])}
                              for i, (s2, k) in enumerate(cells) if s2 == s} for s in settings},
            }
    for (m, metric), rows in values.items():
        base = values.get(("heta", metric), {})
        common = [rid for rid in rows if rid in base]
        if m == "heta" or not common:
            continue
        pair = torch.tensor([[rows[r], base[r]] for r in common], dtype=torch.float64).transpose(0, 1)  # [2, R, 1+C]
        diff = _max_relative(pair)[2]
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(common), (resamples, len(common)), generator=g)
        boot = _max_relative(pair[:, idx])[2]  # [2, B]
        out["metrics"][m, metric]["versus_heta"] = {
            "diff": float(diff[0] - diff[1]), "ci": _interval(boot[0] - boot[1]), "records": len(common)}
    for s in settings:
        changed = [rec["draws"][s][str(k)]["token"] != rec["greedy"]["token"]
                   for rec in records.values() for k in seeds]
        distinct = [len({rec["greedy"]["token"]} | {rec["draws"][s][str(k)]["token"] for k in seeds})
                    for rec in records.values()]
        out["tokens"][s] = {"changed": sum(changed) / len(changed) if changed else None,
                            "distinct": sum(distinct) / len(distinct) if distinct else None}
    return out


def _interval(boot: torch.Tensor) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of bootstrap values (inf and nan kept out when possible)."""
    finite = boot[torch.isfinite(boot)]
    if finite.numel() < boot.numel() or finite.numel() == 0:
        return (float("nan"), float("nan"))
    q = torch.quantile(finite, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return (float(q[0]), float(q[1]))


__all__ = ["DECODING_GRID", "DECODING_SEEDS", "NOISE_SCALES", "TokenCache", "decoding_sensitivity",
           "decoding_summary", "Paraphrase", "attribution_change", "embedding_noise", "load_paraphrases",
           "noise_sensitivity", "paraphrase_agreement", "paraphrased", "perturbed_embeddings", "ranks",
           "spearman", "target_ids", "word_scores"]
