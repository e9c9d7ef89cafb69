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

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..chat import has_chat_template
from ..errors import ConfigError, HetaError, InputError
from ..files import FileLock, remove_stale_temporaries
from ..request import tokenize_context, tokenize_request, tokenize_target
from ..result import Attribution
from .answer import answer_span, contains_answer, greedy_answer, stop_ids
from .baselines.heta_variants import VARIANTS
from .data import EvalExample, chat_example
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
    prompt_format: "plain" (the example's prompt as text) or "chat" (its prompt as the user
    message of the model's chat template, :func:`heta_fast.evaluate.data.chat_example`);
    target: "gold" (the example's target), "greedy" (the first token of the model's own greedy
    answer) or "answer_word" (the token where the gold answer begins in that answer, the answer's
    tokens before it appended to the context; an answer without the gold answer is an
    ``InputError`` for the example); max_new_tokens: the length limit of that answer (recorded for
    every target: every record holds the answer and whether it contains the gold one).
    """

    samples: int = 10
    seed: int = 0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    measure: str = "prob"
    ig_steps: int = 32
    metrics: tuple[str, ...] = METRICS
    prompt_format: str = "plain"
    target: str = "gold"
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")

    def to_dict(self) -> dict:
        """The settings that identify a results file. The answer settings appear only when they
        differ from their defaults, so that files written before they existed still continue;
        :func:`run_header` shows them in full under ``answer``."""
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        d["metrics"] = list(self.metrics)
        for key, default in _ANSWER_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        return d

    def answer_dict(self) -> dict:
        return {key: getattr(self, key) for key in _ANSWER_DEFAULTS}


PROMPT_FORMATS = ("plain", "chat")
TARGETS = ("gold", "greedy", "answer_word")
_ANSWER_DEFAULTS = {"prompt_format": "plain", "target": "gold", "max_new_tokens": 16}


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
    message: list[int] | None = None
    answer: dict | None = None


def example_target(attributor, ex: EvalExample) -> torch.Tensor:
    """The example's gold target as token ids [T]: ``ex.target`` tokenised as the engine tokenises a
    target, its first ``ex.target_tokens`` when that is set."""
    ids = tokenize_target(attributor.tokenizer, ex.target, attributor.adapter.vocab_size)
    return ids if ex.target_tokens is None else ids[: ex.target_tokens]


def pipeline_records(attributor, examples: Sequence[EvalExample]) -> list[dict]:
    """Examples as the pipeline's records (what ``heta-fast run``, ``attribute_dataset`` and
    ``attribute_ray`` read): ``{"id", "prompt", "target"}`` with the target as token ids
    (:func:`example_target`), so that a benchmark or profile of the pipeline attributes exactly
    the evaluation's prompt and target."""
    return [{"id": ex.id, "prompt": ex.prompt, "target": example_target(attributor, ex).tolist()}
            for ex in examples]


def prepare_example(attributor, ex: EvalExample, settings: EvalSettings | None = None) -> PreparedExample:
    """Tokenise the example as the engine does; map its character spans to token indices.

    With ``settings`` (a run's), the example is first put in the run's prompt format, the model's
    greedy answer is generated, and the target is the run's (gold, or the answer's first token);
    ``answer`` then holds the answer's text, whether it contains the gold answer, the attributed
    token and its probability p(target | prompt). Without, the example is taken as it is.
    """
    tok, vocab = attributor.tokenizer, attributor.adapter.vocab_size
    ex = _formatted(ex, tok, settings)
    target = example_target(attributor, ex)
    answer = None
    if settings is not None:
        ex, target, answer = _own_answer(attributor, ex, target, settings)
    req = tokenize_request(tok, ex.prompt, target, attributor.adapter.max_length, vocab,
                           sink_id=attributor.sink_id(attributor.config))
    support = distractor = gold = message = None
    if ex.support or ex.distractor or ex.gold or "message" in ex.meta:
        offsets = token_offsets(tok, ex.prompt, req.context_ids.tolist())
        if ex.support and ex.distractor:
            support = tokens_in(ex.prompt, offsets, [ex.support])
            distractor = tokens_in(ex.prompt, offsets, [ex.distractor])
        if ex.gold:
            gold = tokens_in(ex.prompt, offsets, ex.gold)
        if "message" in ex.meta:
            message = tokens_in(ex.prompt, offsets, [ex.meta["message"]])
    return PreparedExample(ex, req.context_ids, req.target_ids, support, distractor, gold, message, answer)


def _formatted(ex: EvalExample, tokenizer, settings: EvalSettings | None) -> EvalExample:
    """The example in the run's prompt format (as it is without settings)."""
    return chat_example(ex, tokenizer) if settings is not None and settings.prompt_format == "chat" else ex


# ----------------------------------------------------------------------------- same examples
def check_same_examples(attributor, examples: Sequence[EvalExample], records: Sequence[dict],
                        settings: EvalSettings, source: str) -> None:
    """``InputError`` naming the first example whose records in ``source`` (the results file to
    continue, or one to merge) were computed on another example with the same id.

    What a record already stores is compared, so that every results file is checked as it is: a
    scored record's ``context_tokens`` (the prompt's tokens in the run's prompt format; with
    ``answer_word`` the answer's words follow them) and its target, ``target_tokens`` for the gold
    target, else the gold answer its ``answer`` was checked against. A failed record stores nothing
    of its example and is not checked.
    """
    stored: dict[str, dict] = {}
    for r in records:
        if r.get("ok") and isinstance(r.get("context_tokens"), list):
            stored.setdefault(r["example"], r)
    for ex in examples:
        if ex.id in stored and not _same_input(attributor, ex, stored[ex.id], settings):
            raise InputError(f"{source} holds records of example {ex.id!r} computed on another example with "
                             "that id (its prompt or target differs); use another --out for other data")


def _same_input(attributor, ex: EvalExample, record: dict, settings: EvalSettings) -> bool:
    """Whether ``record`` (a scored one) was computed on ``ex`` under ``settings``."""
    tok, pieces = attributor.tokenizer, attributor.pieces  # as the engine records a result's tokens
    try:
        ex = _formatted(ex, tok, settings)
        prompt = pieces(tokenize_context(tok, ex.prompt, attributor.adapter.vocab_size,
                                         sink_id=attributor.sink_id(attributor.config)).context_ids)
        gold = pieces(example_target(attributor, ex)) if settings.target == "gold" else None
    except HetaError:  # the example no longer prepares: it cannot be the one that was scored
        return False
    context = record["context_tokens"]
    if context[:len(prompt)] != prompt or (settings.target != "answer_word" and len(context) != len(prompt)):
        return False
    if gold is not None:
        return record.get("target_tokens") == gold
    answer = record.get("answer")
    return not isinstance(answer, dict) or answer.get("gold") == str(ex.meta.get("answer", ex.target)).strip()


def _own_answer(attributor, ex: EvalExample, gold_ids: torch.Tensor, settings: EvalSettings):
    """(example, target ids [T], answer record): the model's greedy answer to ``ex.prompt`` and the
    run's target; with ``answer_word`` the example's prompt gains the answer's words before it."""
    tok, adapter = attributor.tokenizer, attributor.adapter
    sink_id = attributor.sink_id(attributor.config)

    def tokenize(prompt: str) -> torch.Tensor:
        return tokenize_context(tok, prompt, adapter.vocab_size, sink_id=sink_id).context_ids

    context = tokenize(ex.prompt)
    room = settings.max_new_tokens if adapter.max_length is None else adapter.max_length - context.numel()
    if room < 1:
        raise InputError(f"the prompt's {context.numel()} tokens leave no room for an answer "
                         f"(the model's maximum is {adapter.max_length})")
    own = greedy_answer(adapter, context, min(settings.max_new_tokens, room), stop_ids(attributor))
    gold_answer = ex.meta.get("answer", ex.target)
    text = tok.decode(own.ids.tolist(), skip_special_tokens=True)
    record = {"text": text, "tokens": len(own.ids), "gold": str(gold_answer).strip(),
              "contains_gold": contains_answer(text, gold_answer)}
    if settings.target == "answer_word":
        ex, target, p_target, start = _answer_word(tok, tokenize, ex, context, own, gold_answer, text)
        record["word_start"] = start
    else:
        target = own.ids[:1] if settings.target == "greedy" else gold_ids
        p_target = float(own.first_probs[int(target[0])])
    record.update(target_token=tok.decode([int(target[0])]), p_target=p_target)
    return ex, target, record


def _answer_word(tok, tokenize, ex: EvalExample, context: torch.Tensor, own, gold_answer, text: str):
    """(example whose prompt ends with the answer's words before the gold answer, target ids [1],
    the target's probability in the answer, its index in the answer)."""
    span = answer_span(tok, own.ids, gold_answer)
    if span is None:
        raise InputError(f"example {ex.id}: the model's answer {text!r} does not contain the gold answer "
                         f"{str(gold_answer).strip()!r}; --target answer_word has no word to attribute")
    start = span[0]
    continued = torch.cat([context, own.ids[:start]])
    # The words' text as they continue the prompt (a token's own decoding may lack the space before it).
    head, full = tok.decode(context.tolist()), tok.decode(continued.tolist())
    prefix = full[len(head):] if full.startswith(head) else None
    extended = replace(ex, prompt=ex.prompt + (prefix or ""))
    if prefix is None or not torch.equal(tokenize(extended.prompt), continued):
        raise InputError(f"example {ex.id}: the prompt followed by the answer's first words {prefix!r} does not "
                         "tokenise to the generated ids; the answer word cannot be attributed in context")
    return extended, own.ids[start:start + 1], float(own.token_probs[start]), start


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
        if prep.message is not None and total > 0:  # a chat prompt: mass outside the user's message
            diag["template_mass"] = 1.0 - float(mag[prep.message].sum()) / total
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
    return {"model": attributor.model_name, "model_dtype": attributor.adapter.dtype_name,
            "settings": settings.to_dict(), "answer": settings.answer_dict(), "heta_config": cfg, "data": data}


def check_prompt_format(attributor, settings: EvalSettings) -> None:
    """``ConfigError`` for a chat prompt format on a model whose tokenizer has no chat template:
    once, up front, instead of every example failing with the same error."""
    if settings.prompt_format == "chat" and not has_chat_template(attributor.tokenizer):
        raise ConfigError(f"--prompt-format chat: the tokenizer of {attributor.model_name} has no chat template; "
                          "use --prompt-format plain")


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
    check_prompt_format(attributor, settings)
    lock = FileLock(out, "results file").acquire(wait=False)
    try:
        remove_stale_temporaries(out)  # of a run killed mid-write
        store = ResultsFile.open(out, run_header(attributor, settings, data))
        check_same_examples(attributor, examples, store.records, settings, str(out))
        store.absorb(merge, check=lambda path, records: check_same_examples(
            attributor, examples, records, settings, f"--merge file {path}"))
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
        prep = prepare_example(attributor, ex, settings)
    except HetaError as exc:
        store.add(_failure(ex, m, exc) for m in pending)
        return
    for group in method_groups(pending):
        if on_group is not None:
            on_group(ex.id, group)
        try:
            results = run_methods(attributor, prep.example.prompt, prep.target_ids, group, ig_steps=settings.ig_steps)
        except HetaError as exc:
            store.add(_failure(ex, m, exc) for m in group)
            continue
        records = []
        for m in group:
            res = results[m]
            records.append({
                "example": ex.id, "method": m, "ok": True, "seconds": float(res.timings.get("total", 0.0)),
                "n_context": len(res.context_tokens), "target_tokens": res.target_tokens, "answer": prep.answer,
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
