"""EVALUATION.md's tables from per-record eval results files, and the verdict on HETA's variants.

    python scripts/eval_tables.py FILES... [--methods a,b] [--complete] [--correct] [--paired heta]
                                  [--decide heta] [--write SLIM.json]

Records of several files (shards, or runs of different methods on the same data and settings)
are pooled; an (example, method) pair met twice keeps the first file's record. ``--complete``
keeps only the examples every listed method scored, so every row of a table covers the same
examples; ``--correct`` only those the model answered correctly (files written with
``--target greedy``). ``--paired M`` prints M − every other method; ``--decide M`` prints, for
every other method, on how many metrics it beats M and loses to it (paired 95% interval
excluding 0, sufficiency lower is better): the rule issue 17 §4 sets for a new default.
``--write`` saves the pooled records without score rows and token texts (small enough to commit;
every table rebuilds from it).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heta_fast.evaluate.results_file import FORMAT, VERSION, read_results_file  # noqa: E402
from heta_fast.evaluate.runner import METRICS  # noqa: E402
from heta_fast.evaluate.summary import (  # noqa: E402
    LABELS,
    correct_records,
    paired_difference,
    render_paired,
    render_table,
    summarise,
)
from heta_fast.files import atomic_write  # noqa: E402

LOWER_IS_BETTER = {"sufficiency"}
BULKY = ("scores", "context_tokens", "target_tokens")


def pooled(paths: list[str]) -> tuple[dict, list[dict]]:
    """(the first file's header, every (example, method) record once, the first file's first)."""
    seen, out, header = set(), [], None
    for path in paths:
        head, records = read_results_file(path)
        header = header or head
        for r in records:
            if (r["example"], r["method"]) not in seen:
                seen.add((r["example"], r["method"]))
                out.append(r)
    return header, out


def complete(records: list[dict], methods: list[str]) -> list[dict]:
    """The records of the examples every method in ``methods`` scored (ok)."""
    done: dict[str, set] = {}
    for r in records:
        if r.get("ok"):
            done.setdefault(r["example"], set()).add(r["method"])
    keep = {e for e, ms in done.items() if set(methods) <= ms}
    return [r for r in records if r["example"] in keep]


def verdict(records: list[dict], base: str) -> str:
    """Per other method: metrics where it wins / loses against ``base`` (intervals excluding 0)."""
    others = [m for m in dict.fromkeys(r["method"] for r in records) if m != base]
    lines = [f"| method | n | wins over {base} | losses to {base} | ties |", "|---|---|---|---|---|"]
    for m in others:
        wins, losses, ties, n = [], [], [], 0
        for k in METRICS:
            mean, lo, hi, n_k = paired_difference(records, m, base, k)
            if math.isnan(mean):
                continue
            n = max(n, n_k)
            better, worse = (hi < 0, lo > 0) if k in LOWER_IS_BETTER else (lo > 0, hi < 0)
            (wins if better else losses if worse else ties).append(LABELS[k])
        lines.append(f"| {m} | {n} | {len(wins)}: {', '.join(wins) or '–'} | {len(losses)}: "
                     f"{', '.join(losses) or '–'} | {len(ties)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--methods", default=None, help="comma-separated methods to keep, in this order")
    p.add_argument("--complete", action="store_true", help="only examples every kept method scored")
    p.add_argument("--correct", action="store_true", help="only examples the model answered correctly")
    p.add_argument("--exclude-first", action="store_true", help="DSA and F1 with position 0 dropped")
    p.add_argument("--paired", default=None)
    p.add_argument("--decide", default=None)
    p.add_argument("--write", default=None)
    args = p.parse_args(argv)
    header, records = pooled(args.files)
    methods = args.methods.split(",") if args.methods else list(dict.fromkeys(r["method"] for r in records))
    records = [r for r in records if r["method"] in methods]
    if args.complete:
        records = complete(records, methods)
    if args.correct:
        records = correct_records(records) or []
    print(render_table(summarise(records, args.exclude_first), markdown=True))
    if args.paired:
        print()
        print(render_paired(records, args.paired, args.exclude_first, markdown=True))
    if args.decide:
        print()
        print(verdict(records, args.decide))
    if args.write:
        slim = [{k: v for k, v in r.items() if k not in BULKY} for r in records]
        payload = {"format": FORMAT, "version": VERSION, "header": header, "records": slim}
        atomic_write(Path(args.write), json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
