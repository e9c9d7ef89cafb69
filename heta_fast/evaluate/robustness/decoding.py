"""Decoding hyperparameters: the record's prompt (plain, or through the chat template when the caller
passes :func:`heta_fast.evaluate.data.chat_example`'s rewrite) is answered greedily (the reference)
and, for every decoding setting × seed, by sampling (:mod:`heta_fast.evaluate.sampling`); the FIRST token of
each answer is attributed with every method and scored with the six metrics of
:mod:`heta_fast.evaluate.metrics` (:func:`heta_fast.evaluate.runner.score_attribution`, the evaluation's
default settings). With the prompt fixed, an attribution and its metrics depend only on (record,
target token, method), so they are computed once per distinct token (:class:`TokenCache`); a
setting changes the numbers only through which first tokens it draws.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from ...errors import InputError
from ..answer import contains_answer, stop_ids
from ..data import EvalExample
from ..methods import run_methods
from ..runner import EvalSettings, prepare_example, score_attribution
from ..sampling import Decoding, decode, generator_for

# One factor at a time around the base (temperature 1, top-p 1, top-k off, repetition penalty 1).
DECODING_GRID = ("temperature=0.7", "temperature=1.0", "temperature=1.3", "top_p=0.9", "top_k=50",
                 "repetition_penalty=1.2")
DECODING_SEEDS = (0, 1, 2)


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


def _changes(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """values [..., R, 1 + C] (greedy first) -> (means [..., 1 + C], relative changes [..., C],
    absolute changes [..., C]).

    absolute change = |mean_cell − mean_greedy|; relative change = that / |mean_greedy| (inf when
    the greedy mean is 0, and meaningless when it is near 0: the absolute change is then the number
    to read)."""
    means = values.mean(-2)
    delta = (means[..., 1:] - means[..., :1]).abs()
    return means, delta / means[..., :1].abs(), delta


def decoding_summary(records: dict, methods: Sequence[str], metrics: Sequence[str], settings: Sequence[str],
                     seeds: Sequence[int | str], resamples: int = 2000, seed: int = 0) -> dict:
    """The decoding study's numbers from its per-record results (``records``: id -> record of
    :func:`decoding_sensitivity` plus its ``tokens`` cache entry).

    Per method and metric, over the records holding every needed value: ``greedy`` (the mean of
    the greedy first token's metric over records), ``cells`` {setting: {seed: {"mean", "relative",
    "absolute"}}} with absolute = |mean − greedy| and relative = absolute / |greedy|, ``max`` (the
    largest relative change over the grid: the paper's number; inf or nan when the greedy mean is
    0) with the (setting, seed) attaining it (None then), ``ci`` (95% percentile bootstrap of that
    maximum, records resampled with replacement, ``resamples`` times, ``seed``), ``max_abs`` and
    ``abs_ci`` (the same for the absolute change, defined whatever the greedy mean), ``records``;
    ``versus_heta`` {"diff": max_method − max_heta, "ci", "abs_diff", "abs_ci"} on the records both
    hold (paired: the same resampled records for both). ``tokens``: per setting, the share of
    (record, seed) draws whose first token differs from the greedy one, the mean number of distinct
    first tokens per record (greedy included) and the share of draws whose answer contains the gold
    answer (``greedy_contains_gold``: the same for the greedy answers).
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
            means, rel, delta = _changes(t)
            top = rel.amax(-1)
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(len(rows), (resamples, len(rows)), generator=g)
            _, boot_rel, boot_delta = _changes(t[idx])
            arg = cells[int(rel.argmax())] if bool(torch.isfinite(top)) else None  # greedy mean 0: undefined
            out["metrics"][m, metric] = {
                "records": len(rows), "greedy": float(means[0]), "max": float(top), "argmax": arg,
                "ci": _interval(boot_rel.amax(-1)),
                "max_abs": float(delta.amax(-1)), "abs_ci": _interval(boot_delta.amax(-1)),
                "cells": {s: {k: {"mean": float(means[1 + i]), "relative": float(rel[i]), "absolute": float(delta[i])}
                              for i, (s2, k) in enumerate(cells) if s2 == s} for s in settings},
            }
    for (m, metric), rows in values.items():
        base = values.get(("heta", metric), {})
        common = [rid for rid in rows if rid in base]
        if m == "heta" or not common:
            continue
        pair = torch.tensor([[rows[r], base[r]] for r in common], dtype=torch.float64).transpose(0, 1)  # [2, R, 1+C]
        _, rel, delta = _changes(pair)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(common), (resamples, len(common)), generator=g)
        _, boot_rel, boot_delta = _changes(pair[:, idx])  # [2, B, C]
        top, boot_top = rel.amax(-1), boot_rel.amax(-1)
        top_abs, boot_abs = delta.amax(-1), boot_delta.amax(-1)
        out["metrics"][m, metric]["versus_heta"] = {
            "diff": float(top[0] - top[1]), "ci": _interval(boot_top[0] - boot_top[1]), "records": len(common),
            "abs_diff": float(top_abs[0] - top_abs[1]), "abs_ci": _interval(boot_abs[0] - boot_abs[1])}
    for s in settings:
        changed = [rec["draws"][s][str(k)]["token"] != rec["greedy"]["token"]
                   for rec in records.values() for k in seeds]
        distinct = [len({rec["greedy"]["token"]} | {rec["draws"][s][str(k)]["token"] for k in seeds})
                    for rec in records.values()]
        gold = [rec["draws"][s][str(k)].get("contains_gold") for rec in records.values() for k in seeds]
        out["tokens"][s] = {"changed": _share(changed), "distinct": sum(distinct) / len(distinct) if distinct else None,
                            "contains_gold": _share(gold)}
    out["greedy_contains_gold"] = _share([rec["greedy"].get("contains_gold") for rec in records.values()])
    return out


def _share(flags: list) -> float | None:
    """The share of true flags, or None when there are none or any is unknown."""
    return None if not flags or any(f is None for f in flags) else sum(map(bool, flags)) / len(flags)


def _interval(boot: torch.Tensor) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of bootstrap values (inf and nan kept out when possible)."""
    finite = boot[torch.isfinite(boot)]
    if finite.numel() < boot.numel() or finite.numel() == 0:
        return (float("nan"), float("nan"))
    q = torch.quantile(finite, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return (float(q[0]), float(q[1]))
