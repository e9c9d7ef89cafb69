"""Run methods × examples, score every attribution with every metric, and keep the results.

Results live in one JSON file that is rewritten atomically (a uniquely named temporary file,
then a rename) after every finished (example, method group): an interrupted run loses at most
the group in progress, and running the same command again skips what the file already holds.
A run holds the file's lock (``<file>.lock``): a second process given the same file is refused
at once instead of overwriting the first one's records. A file written with other settings
(model, metric settings, HETA configuration), of another version, or malformed is refused
rather than mixed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, HetaError
from ..files import FileLock, remove_stale_temporaries
from ..request import tokenize_request, tokenize_target
from ..result import Attribution
from .baselines.heta_variants import VARIANTS
from .data import EvalExample
from .methods import resolve_methods, run_methods
from .metrics import DEFAULT_FRACTIONS, dsa, f1_alignment, hard_faithfulness, soft_faithfulness
from .results_file import ResultsFile
from .spans import token_offsets, tokens_in

METRICS = ("soft_nc", "soft_ns", "comprehensiveness", "sufficiency", "dsa", "f1")
# Configuration fields that change no number (where and in what chunks the work runs).
_NEUTRAL_CONFIG = ("max_batch", "memory_budget")


@dataclass(frozen=True)
class EvalSettings:
    """Metric settings of a run (they are part of the results file's identity).

    samples / seed: Soft-NS/NC Bernoulli masks; fractions / measure: hard comprehensiveness and
    sufficiency; ig_steps: integrated-gradient quadrature nodes; metrics: which of
    :data:`METRICS` to compute (the others are recorded as None; DSA and F1 cost no forward pass).
    """

    samples: int = 10
    seed: int = 0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    measure: str = "prob"
    ig_steps: int = 32
    metrics: tuple[str, ...] = METRICS

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        d["metrics"] = list(self.metrics)
        return d


# ----------------------------------------------------------------------------- one example
@dataclass
class PreparedExample:
    """An example tokenised: ids, and the token indices of its segments and gold words."""

    example: EvalExample
    context_ids: torch.Tensor
    target_ids: torch.Tensor
    support: list[int] | None
    distractor: list[int] | None
    gold: list[int] | None


def prepare_example(attributor, ex: EvalExample) -> PreparedExample:
    """Tokenise the example as the engine does; map its character spans to token indices."""
    tok, vocab = attributor.tokenizer, attributor.adapter.vocab_size
    target = tokenize_target(tok, ex.target, vocab)
    if ex.target_tokens is not None:
        target = target[: ex.target_tokens]
    req = tokenize_request(tok, ex.prompt, target, attributor.adapter.max_length, vocab)
    support = distractor = gold = None
    if ex.support or ex.distractor or ex.gold:
        offsets = token_offsets(tok, ex.prompt, req.context_ids.tolist())
        if ex.support and ex.distractor:
            support = tokens_in(ex.prompt, offsets, [ex.support])
            distractor = tokens_in(ex.prompt, offsets, [ex.distractor])
        if ex.gold:
            gold = tokens_in(ex.prompt, offsets, ex.gold)
    return PreparedExample(ex, req.context_ids, req.target_ids, support, distractor, gold)


def alignment(scores: torch.Tensor, prep: PreparedExample, exclude_first: bool = False) -> dict:
    """DSA and F1 of one row, on score magnitudes |s| (signed methods point both ways).

    exclude_first: position 0 (the attention-sink position; the BOS token where the tokenizer
    adds one) is dropped before normalisation and from every index set.
    """
    s = scores.detach().double().abs()
    keep = list(range(1 if exclude_first else 0, s.numel()))
    where = {old: new for new, old in enumerate(keep)}
    view = s[keep]

    def remap(idx):
        return None if idx is None else [where[i] for i in idx if i in where]

    sup, dis, gold = remap(prep.support), remap(prep.distractor), remap(prep.gold)
    out = {"dsa": None, "f1": None}
    if sup is not None:
        out["dsa"] = dsa(view, sup, dis)
    if gold is not None:
        out["f1"] = f1_alignment(view, gold) if gold else 0.0
    return out


def score_attribution(attributor, prep: PreparedExample, res: Attribution, settings: EvalSettings) -> dict:
    """Every metric of one attribution, averaged over its target rows, plus diagnostics."""
    adapter, max_batch = attributor.adapter, attributor.config.max_batch
    n_ctx = prep.context_ids.numel()
    rows = []
    for t in range(prep.target_ids.numel()):
        input_ids = torch.cat([prep.context_ids, prep.target_ids[:t]])
        target = int(prep.target_ids[t])
        row = res.scores[t]
        wanted = set(settings.metrics)
        metrics = dict.fromkeys(METRICS)
        mag = row.detach().double().abs()
        total = float(mag.sum())
        diag = {"first_mass": float(mag[0]) / total if total > 0 else 0.0}
        if wanted & {"soft_nc", "soft_ns"}:
            soft = soft_faithfulness(adapter, input_ids, target, row, samples=settings.samples,
                                     seed=settings.seed, max_batch=max_batch)
            metrics.update(soft_nc=soft.soft_nc, soft_ns=soft.soft_ns)
            diag.update(s0=soft.s0, soft_s=soft.sufficiency, soft_c=soft.comprehensiveness)
        if wanted & {"comprehensiveness", "sufficiency"}:
            hard = hard_faithfulness(adapter, input_ids, target, row, fractions=settings.fractions,
                                     measure=settings.measure, max_batch=max_batch)
            metrics.update(comprehensiveness=hard.comprehensiveness, sufficiency=hard.sufficiency)
        metrics.update(alignment(row, prep))
        metrics = {k: (v if k in wanted else None) for k, v in metrics.items()}
        gap = res.config.get("completeness_gap")  # integrated gradients: Σ IG − (f(x) − f(x'))
        if gap is not None:
            diag["completeness_gap"] = float(gap[t])
        if prep.support is not None and total > 0:
            diag["support_mass"] = float(mag[prep.support].sum()) / total
            diag["distractor_mass"] = float(mag[prep.distractor].sum()) / total
        excluded = alignment(row, prep, exclude_first=True) if n_ctx > 1 else {}
        rows.append({"metrics": metrics,
                     "first_excluded": {k: v for k, v in excluded.items() if k in wanted},
                     "diagnostics": diag})
    return {key: _mean_dicts([r[key] for r in rows]) for key in ("metrics", "first_excluded", "diagnostics")}


def _mean_dicts(dicts: list[dict]) -> dict:
    keys = dict.fromkeys(k for d in dicts for k in d)
    out = {}
    for k in keys:
        vals = [d[k] for d in dicts if d.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def run_header(attributor, settings: EvalSettings, data: str | None) -> dict:
    cfg = {k: v for k, v in attributor.config.to_dict().items() if k not in _NEUTRAL_CONFIG}
    return {"model": attributor.model_name, "model_dtype": str(attributor.adapter.dtype).removeprefix("torch."),
            "settings": settings.to_dict(), "heta_config": cfg, "data": data}


# ----------------------------------------------------------------------------- the loop
def method_groups(methods: Sequence[str]) -> list[list[str]]:
    """The HETA variants form one group (one engine run); every other method is its own group."""
    variants = [m for m in methods if m in VARIANTS]
    others = [[m] for m in methods if m not in VARIANTS]
    return ([variants] if variants else []) + others


def run_evaluation(attributor, examples: Sequence[EvalExample], methods, out: str | Path,
                   settings: EvalSettings | None = None, data: str | None = None, progress: bool = True,
                   on_group: Callable[[str, list[str]], None] | None = None,
                   merge: Sequence[str | Path] = ()) -> ResultsFile:
    """Evaluate ``methods`` on ``examples``, continuing ``out`` if it holds earlier results.

    merge: other results files of the same settings (shards) whose records are taken over first,
    so that only what none of them holds is computed.
    """
    settings = settings or EvalSettings()
    methods = resolve_methods(methods)
    lock = FileLock(out, "results file").acquire(wait=False)
    try:
        remove_stale_temporaries(out)  # of a run killed mid-write
        store = ResultsFile.open(out, run_header(attributor, settings, data))
        store.absorb(merge)
        _run_examples(attributor, examples, methods, settings, store, progress, on_group)
    finally:
        lock.release()
    return store


def _run_examples(attributor, examples, methods, settings, store, progress, on_group) -> None:
    done = store.done()
    bar = _progress(len(examples), progress)
    try:
        for ex in examples:
            pending = [m for m in methods if (ex.id, m) not in done]
            bar.set_postfix_str(ex.id)
            if pending:
                _evaluate_example(attributor, ex, pending, settings, store, on_group)
            bar.update(1)
    finally:
        bar.close()


def _evaluate_example(attributor, ex, pending, settings, store, on_group) -> None:
    try:
        prep = prepare_example(attributor, ex)
    except HetaError as exc:
        store.add(_failure(ex, m, exc) for m in pending)
        return
    for group in method_groups(pending):
        if on_group is not None:
            on_group(ex.id, group)
        try:
            results = run_methods(attributor, ex.prompt, prep.target_ids, group, ig_steps=settings.ig_steps)
        except HetaError as exc:
            store.add(_failure(ex, m, exc) for m in group)
            continue
        records = []
        for m in group:
            res = results[m]
            records.append({
                "example": ex.id, "method": m, "ok": True, "seconds": float(res.timings.get("total", 0.0)),
                "n_context": len(res.context_tokens), "target_tokens": res.target_tokens,
                **score_attribution(attributor, prep, res, settings),
                "context_tokens": res.context_tokens, "scores": res.scores.double().tolist(),
            })
        store.add(records)


def _failure(ex: EvalExample, method: str, exc: Exception) -> dict:
    return {"example": ex.id, "method": method, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


class _NoBar:
    def set_postfix_str(self, *_):
        pass

    def update(self, *_):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; stay usable without it
        return _NoBar()
    return tqdm(total=total, unit="example", dynamic_ncols=True)
