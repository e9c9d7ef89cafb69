"""bf16 against float32, per stage, on the curated set (issue 16 §1: the quality gate of "auto").

    python scripts/precision_quality.py run OUT.json [--start A --stop B] [--curvature-below C] [--precision P]
    python scripts/precision_quality.py table docs/results/precision_quality_*.json

``run``: default model (float32 weights), one torch thread, curated records A..B (prompt
``input_text + "\\nAnswer:"``, target the first token of ``" " + answer``), each attributed with
``precision="float32"`` and ``precision=P`` (default ``"bfloat16"``; ``"bfloat16-split"`` runs
only the forward stage split, so its curvature equals float32's); records with index below C (default 30)
with every component, the others without the curvature. Per record: the Spearman of the flow
gate (the forward stage's attentions), of I (the forward stage: capture and masked passes), of S
(the curvature stage) and of the final scores, bf16 against float32; the relative error of I on
the float32 term's largest tenth; the seconds of each phase in both precisions.
``table``: median and 10th percentile of each Spearman, whether the gate (median >= 0.99,
10th percentile >= 0.97) holds, the median relative error of I's largest tenth.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from measure_cli import gold_target, p10, pending_examples, run_or_table, save_json, spearman

TERMS = ("flow", "information", "curvature", "scores")


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from heta_fast import Attributor, HETAConfig

    attributor = Attributor.from_pretrained("smollm2-135m", device="cpu")
    out = Path(args.out)
    records, pending = pending_examples(out, args.start, args.stop)
    for k, ex in pending:
        target = gold_target(attributor, ex)
        components = ("flow", "curvature", "information") if k < args.curvature_below else ("flow", "information")
        results = {p: attributor.attribute(ex.prompt, target,
                                           config=HETAConfig(components=components, precision=p))
                   for p in ("float32", args.precision)}
        full, half = results["float32"], results[args.precision]
        row = {"n": int(full.scores.shape[1]), "precision": args.precision,
               "timings": {p: r.timings for p, r in results.items()}}
        for term in TERMS:
            a, b = getattr(full, term), getattr(half, term)
            if a is not None and (term != "scores" or "curvature" in components):
                row[term] = spearman(a[0], b[0])
        info, info_half = full.information[0], half.information[0]
        top = info.argsort(descending=True)[: max(1, info.numel() // 10)]
        row["information_top_tenth_relative_error"] = float(((info_half[top] - info[top]).abs() / info[top]).median())
        records[ex.id] = row
        save_json(out, records)
        print(ex.id, {t: round(row[t], 4) for t in TERMS if t in row}, flush=True)


def table(paths) -> None:
    rows = {}
    for path in paths:
        rows.update(json.loads(Path(path).read_text()))
    values = list(rows.values())
    print("| term (stage) | records | Spearman bf16 vs float32: median | 10th percentile | gate (≥ 0.99 / ≥ 0.97) |")
    print("|---|---|---|---|---|")
    stages = {"flow": "forward", "information": "forward", "curvature": "curvature", "scores": "all"}
    for term in TERMS:
        got = sorted(r[term] for r in values if term in r)
        if not got:
            continue
        median, low = statistics.median(got), p10(got)
        gate = "met" if median >= 0.99 and low >= 0.97 else "not met"
        print(f"| {term} ({stages[term]}) | {len(got)} | {median:.4f} | {low:.4f} | {gate} |")
    errors = [r["information_top_tenth_relative_error"] for r in values]
    print(f"\nI's largest tenth, median relative error bf16 vs float32: {statistics.median(errors):.4f} "
          f"(median over records of each record's median)")
    for phase in ("forward", "curvature", "information"):
        ratio = [r["timings"][r.get("precision", "bfloat16")][phase] / r["timings"]["float32"][phase] for r in values
                 if phase in r["timings"]["float32"]]
        if ratio:
            print(f"{phase}: bf16 / float32 seconds, median {statistics.median(ratio):.2f} ({len(ratio)} records)")


def _run_args(parser) -> None:
    parser.add_argument("--curvature-below", type=int, default=30)
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "bfloat16-split"))


if __name__ == "__main__":
    sys.argv[0] = "precision_quality.py"
    run_or_table(__doc__, _run_args, run, table)
