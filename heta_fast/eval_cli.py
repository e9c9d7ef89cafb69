"""``heta-fast eval``: compare attribution methods with faithfulness and alignment metrics.

Kept apart from heta_fast/cli.py so that building the argument parser imports nothing heavy.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from .cli_args import add_engine_args, add_model_args, config_from_args, load_args

DEFAULT_METHODS = "all"


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate attribution methods on a dataset (faithfulness and alignment)",
                       description="Attribute every example with every method, score each attribution with "
                                   "Soft-NC, Soft-NS, comprehensiveness, sufficiency, DSA and F1, print a table "
                                   "(mean and 95% bootstrap interval) and write per-example results. Re-running "
                                   "the same command continues an interrupted run.")
    add_model_args(p)
    p.add_argument("--data", required=True, help="curated-format .json file or a .jsonl dataset (docs/evaluation.md)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods, or 'all' (default): heta, saliency, input_x_gradient, "
                        "integrated_gradients (ig), rollout, occlusion, reagent, heta_flow, heta_curvature, "
                        "heta_information, heta_ungated; or 'grid': heta and its sink / term-scale variants "
                        "(heta_nosink, heta_max, heta_simplex, heta_rank, heta_nosink_max, heta_nosink_simplex, "
                        "heta_nosink_rank)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="evaluate only every N-th example from the I-th (0-based): N processes with shards "
                        "0/N .. N-1/N cover the data once; combine their files with --merge")
    p.add_argument("--out", required=True, help="results JSON file (continued if it exists)")
    p.add_argument("--merge", nargs="+", default=(), metavar="FILE",
                   help="take over the records of these results files (same settings, e.g. shards) before "
                        "computing what is still missing")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--exclude-first", action="store_true",
                   help="show DSA and F1 with the first prompt token dropped from normalisation")
    p.add_argument("--paired", default=None, metavar="METHOD",
                   help="also print METHOD minus every other method per metric (paired over examples, "
                        "95%% bootstrap interval)")
    p.add_argument("--metrics", default="all",
                   help="comma-separated subset of soft_nc,soft_ns,comprehensiveness,sufficiency,dsa,f1 "
                        "(default all; dsa and f1 alone need no extra forward pass)")
    p.add_argument("--samples", type=int, default=10, help="Bernoulli mask samples of Soft-NS/NC (default 10)")
    p.add_argument("--fractions", default="0.1,0.2,0.3", help="top-k fractions of the hard metrics")
    p.add_argument("--measure", default="prob",
                   help="hard metrics: prob (drop of the target's probability, default) | log_prob | kl")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradient quadrature nodes (default 32)")
    p.add_argument("--prompt-format", choices=("plain", "chat"), default="plain",
                   help="plain (default): the example's prompt as text; chat: its prompt (a curated record's "
                        "input_text) as the user message of the model's chat template")
    p.add_argument("--target", choices=("gold", "greedy", "answer_word"), default="gold",
                   help="gold (default): attribute the example's target (a curated record's first answer "
                        "token); greedy: the first token of the model's own greedy answer; answer_word: the "
                        "token where the gold answer begins in that answer, its words before it as context "
                        "(an answer without the gold answer fails that example)")
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="length limit of the model's greedy answer, recorded for every target with whether it "
                        "contains the gold answer (default 16; it also stops at end of turn)")
    add_engine_args(p, components=False)
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar and no model-cache notices")
    return p


def _settings(args):
    from .errors import ConfigError
    from .evaluate.metrics import MEASURES
    from .evaluate.runner import METRICS, EvalSettings

    try:
        fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
    except ValueError:
        raise ConfigError(f"--fractions must be comma-separated numbers, got {args.fractions!r}") from None
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ConfigError("--fractions must be numbers in (0, 1]")
    if args.measure not in MEASURES:
        raise ConfigError(f"--measure must be one of {', '.join(MEASURES)}")
    if args.samples < 1:
        raise ConfigError("--samples must be >= 1")
    if args.ig_steps < 1:
        raise ConfigError("--ig-steps must be >= 1")
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1")
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    metrics = METRICS if names == ["all"] else tuple(dict.fromkeys(names))
    return EvalSettings(samples=args.samples, seed=args.seed, fractions=fractions, measure=args.measure,
                        ig_steps=args.ig_steps, metrics=metrics, prompt_format=args.prompt_format,
                        target=args.target, max_new_tokens=args.max_new_tokens)


def _check_files(args) -> None:
    """Output paths writable; an existing --out and the files to merge readable results files of
    this version: before the model loads. (Whether their settings match the run's needs the model:
    checked when the run opens them.)"""
    from .errors import InputError, ResultFormatError
    from .evaluate.results_file import read_results_file
    from .files import check_writable

    check_writable(args.out, "--out file")
    if args.markdown:
        check_writable(args.markdown, "--markdown file")
        _check_markdown_is_apart(args)
    if Path(args.out).exists():
        read_results_file(args.out)
    for path in args.merge:
        if not Path(path).exists():
            raise InputError(f"no such results file to merge: {path}")
        try:
            read_results_file(path)
        except ResultFormatError as exc:  # its advice is for --out; a file to merge is only refused
            raise ResultFormatError(f"--merge {' '.join(str(exc).removesuffix('; choose another --out').split())}"
                                    ) from None


def _check_markdown_is_apart(args) -> None:
    """The table must not replace a file the run reads or keeps: the results file (every later run
    would refuse it), the dataset or a results file to merge. Real paths are compared, so that
    ``./r.json``, an absolute path or a symlink to it count as the same file."""
    from .errors import ConfigError

    markdown = os.path.realpath(args.markdown)
    for flag, paths in (("--out", [args.out]), ("--data", [args.data]), ("--merge", args.merge)):
        for path in paths:
            if os.path.realpath(path) == markdown:
                raise ConfigError(f"--markdown and {flag} name the same file {path}: the table would replace it")


def run_eval(args) -> int:
    from .engine import Attributor
    from .evaluate.data import load_examples, select_shard
    from .evaluate.methods import resolve_methods
    from .files import FileLock
    from .render import printable

    methods = resolve_methods(args.methods)
    if args.paired is not None:
        args.paired = _paired_method(args.paired, methods)
    settings, config, load = _settings(args), config_from_args(args), load_args(args)
    _check_files(args)
    examples = select_shard(load_examples(args.data, args.limit), args.shard)
    # The results file is ours from here to the end: a second process given it is refused now.
    with FileLock(args.out, "results file").acquire(wait=False):
        attributor = Attributor.from_pretrained(args.model, config=config, **load)
        print(printable(f"{len(examples)} examples x {len(methods)} methods ({', '.join(methods)}) -> {args.out}"),
              flush=True)
        return _evaluate(args, attributor, examples, methods, settings)


def _paired_method(name: str, methods: list[str]) -> str:
    """The canonical name of ``--paired``, read as ``--methods`` reads names (aliases, case), which
    must be one of the evaluated ``methods``."""
    from .errors import ConfigError
    from .evaluate.methods import resolve_methods

    resolved = resolve_methods(name)
    if len(resolved) != 1 or resolved[0] not in methods:
        raise ConfigError(f"--paired {name!r} is not one of the evaluated methods ({', '.join(methods)})")
    return resolved[0]


def _evaluate(args, attributor, examples, methods, settings) -> int:
    from .evaluate.runner import run_evaluation
    from .evaluate.summary import correct_records, failed_examples
    from .files import atomic_write
    from .render import printable

    try:
        store = run_evaluation(attributor, examples, methods, args.out, settings, data=str(args.data),
                               progress=not args.no_progress, merge=args.merge)
    except KeyboardInterrupt:
        print(f"heta-fast: interrupted; finished results are kept in {args.out}: "
              "run the same command again to continue", file=sys.stderr)
        return 130
    ids = {ex.id for ex in examples}
    records = [r for r in store.records if r["example"] in ids and r["method"] in methods]
    md = _report(args, records)
    correct = correct_records(records)
    if correct is not None:
        md += _report(args, correct, "correctly answered (the greedy answer contains the gold answer)",
                      of=len({r["example"] for r in records}))
    failed = failed_examples(records)
    if failed:  # the tables count only what was scored; say what was not, and why (by error type)
        kinds = Counter(error.split(":", 1)[0] for error in failed.values())
        line = (f"{len(failed)} of {len(ids)} examples have failed records ("
                + ", ".join(f"{kind} ×{k}" for kind, k in kinds.most_common())
                + f"; each record's 'error' in {args.out}), e.g. {next(iter(failed.values()))}")
        print(printable("\n" + line))
        md.append(line)
    if args.markdown:
        atomic_write(args.markdown, "\n\n".join(md) + "\n")
        print(printable(f"wrote {args.markdown}"))
    return 0


def _report(args, records: list[dict], subset: str | None = None, of: int = 0) -> list[str]:
    """Print the table (and the paired differences) of ``records``; return them as Markdown. The
    table of a ``subset`` of ``of`` examples is titled with it (the all-examples one as always)."""
    from .evaluate.summary import render_paired, render_table, summarise
    from .render import printable

    summaries = summarise(records, exclude_first=args.exclude_first)
    note = " (DSA and F1 with the first token excluded)" if args.exclude_first else ""
    n = len({r["example"] for r in records})
    title = f"{subset}: {n} of {of}" if subset else f"{n}"
    title += f" examples{note}; mean [95% bootstrap CI]"
    print(printable(f"\n{title}; s / example = attribution wall time\n{render_table(summaries)}"))
    md = ([f"**{title}**"] if subset else []) + [render_table(summaries, markdown=True)]
    if args.paired is not None:
        print(printable(f"\npaired differences{f' ({subset})' if subset else ''}, mean [95% bootstrap CI]\n"
                        f"{render_paired(records, args.paired, args.exclude_first)}"))
        md.append(render_paired(records, args.paired, args.exclude_first, markdown=True))
    return md
