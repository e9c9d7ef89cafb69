"""What the per-record measurement scripts share: the curated data as the evaluation reads it (its
prompts and gold targets), a percentile, Spearman's correlation, atomic saving, and their
``run OUT.json [--start A --stop B] ...`` / ``table FILES...`` command line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"


def curated() -> list:
    """The curated set (``../shared/data/curated_qa_100.json`` beside the repository) as the evaluation
    reads it (``heta_fast.evaluate.data.load_curated``): examples whose prompt is ``input_text +
    "\\nAnswer:"``, with the record's segments as spans of it and its question in ``meta``."""
    from heta_fast.evaluate.data import load_curated

    return load_curated(DATA)


def pending_examples(out: Path, start: int, stop: int) -> tuple[dict, list]:
    """(the per-record results already in ``out``, keyed by id; the (index, example) pairs of the
    curated records start..stop not among them): a run continues where it stopped."""
    records = json.loads(out.read_text()) if out.exists() else {}
    examples = curated()
    return records, [(k, examples[k]) for k in range(start, min(stop, len(examples)))
                     if examples[k].id not in records]


def gold_target(attributor, example) -> list[int]:
    """The example's gold target ids, by the evaluation's rule (``heta_fast.evaluate.runner.example_target``:
    the first token of ``" " + answer``)."""
    from heta_fast.evaluate.runner import example_target

    return example_target(attributor, example).tolist()


def input_text(example) -> str:
    """The curated record's ``input_text``: the example's prompt without its answer cue."""
    return example.prompt.removesuffix(example.meta["cue"])


def spearman(a, b) -> float:
    """Spearman correlation of two score vectors (tensors or lists of n numbers), ties by mid-rank:
    the evaluation's own (heta_fast.evaluate.robustness.ranks); nan when either side is constant."""
    import torch

    from heta_fast.evaluate.robustness.ranks import spearman as rank_correlation

    rho = rank_correlation(torch.as_tensor(a, dtype=torch.float64).flatten(),
                           torch.as_tensor(b, dtype=torch.float64).flatten())
    return float("nan") if rho is None else rho


def save_json(path: Path, doc, indent: int | None = 1) -> None:
    """Write ``doc`` as JSON atomically: a run stopped while saving leaves the previous file whole."""
    from heta_fast.files import atomic_write

    atomic_write(path, json.dumps(doc, indent=indent) + "\n")


def p10(values) -> float:
    """The 10th percentile (the lower of the two nearest ranks)."""
    ordered = sorted(values)
    return ordered[int(0.1 * (len(ordered) - 1))]


def run_or_table(doc: str, add_run_args, run, table, argv=None) -> None:
    """Parse ``run OUT [--start A] [--stop B] + add_run_args(parser)`` or ``table PATHS...`` and call
    ``run(args)`` or ``table(paths)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--start", type=int, default=0)
    r.add_argument("--stop", type=int, default=100)
    add_run_args(r)
    sub.add_parser("table").add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else table(args.paths)
