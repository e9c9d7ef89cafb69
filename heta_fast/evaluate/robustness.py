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
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import InputError
from ..request import tokenize_target
from .data import EvalExample, _read_json, _word_occurrences
from .methods import run_methods
from .spans import Span, token_offsets, tokens_in

NOISE_SCALES = (0.01, 0.1, 0.5)


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
    for every lookup of n tokens (outputs [..., n, d]); the hook is removed on leaving."""

    def add_noise(module, args, output):
        if output.shape[-2:] == noise.shape:
            return output + noise.to(device=output.device, dtype=output.dtype)
        return output

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


__all__ = ["NOISE_SCALES", "Paraphrase", "attribution_change", "embedding_noise", "load_paraphrases",
           "noise_sensitivity", "paraphrase_agreement", "paraphrased", "perturbed_embeddings", "ranks",
           "spearman", "target_ids", "word_scores"]
