"""The information term's cheap estimates against the exact term, per record (issue 16 §2).

    python scripts/information_estimators.py run OUT.json [--start A --stop B] [--ranks 8,32] [--spans 8,16]
        [--long N] [--no-scores]
    python scripts/information_estimators.py table docs/results/information_*.json

``run``: default model, one torch thread, curated records A..B (prompt ``input_text +
"\\nAnswer:"``, target the first token of ``" " + answer``); with ``--long N`` instead, prompts of
about N tokens made of consecutive curated records' texts, then the record's question (one
record per start). Estimates: the second-order expansion at each rank of ``--ranks``
(``information_estimator="fisher"``) and the span estimate at each span of ``--spans``
(``information_estimator="span"``); an empty list runs none of that kind. Per record: n, the
seconds of the exact term and of each estimate, the Spearman of the estimate against the exact I,
and (unless ``--long`` or ``--no-scores``: S costs more than the rest) of the final scores (the
default form, M · (β S + γ I), with the same M and S) against the exact final scores.
``table``: the median and 10th percentile of each Spearman and the median speed-up, per file.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from measure_cli import curated, gold_target, input_text, p10, run_or_table, save_json, spearman


def _prompts(args, attributor):
    """(id, prompt, target ids) per curated record start..stop: its own prompt, or with ``--long N``
    about N tokens of consecutive records' texts ending in its own text and answer cue."""
    examples = curated()
    for k in range(args.start, min(args.stop, len(examples))):
        ex = examples[k]
        target = gold_target(attributor, ex)
        if not args.long:
            yield ex.id, ex.prompt, target
            continue
        docs, j = [], k
        while len(attributor.tokenizer("\n\n".join(docs + [input_text(ex)]))["input_ids"]) < args.long:
            docs.append(input_text(examples[(j + 1) % len(examples)]))
            j += 1
        yield ex.id, "\n\n".join(docs[:-1] + [input_text(ex)]) + ex.meta["cue"], target


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from heta_fast import Attributor, HETAConfig

    attributor = Attributor.from_pretrained("smollm2-135m", device="cpu")
    estimates = [("ranks", "fisher", "information_rank", int(k)) for k in args.ranks.split(",") if k]
    estimates += [("spans", "span", "information_span", int(k)) for k in args.spans.split(",") if k]
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else {}
    for rid, prompt, target in _prompts(args, attributor):
        if rid in records:
            continue
        base = HETAConfig()
        start = time.process_time()
        exact = attributor.attribute(prompt, target, config=base.replace(components=("information",)))
        exact_seconds = time.process_time() - start
        row = {"n": int(exact.information.shape[1]), "exact_seconds": exact_seconds, "ranks": {}, "spans": {}}
        full = None
        if not (args.long or args.no_scores):  # the final scores need S: at long n its cost is beside the point
            full = attributor.attribute(prompt, target, config=base)
            recombined = full.flow * (base.beta * full.curvature + base.gamma * full.information)
            assert torch.allclose(recombined, full.scores, rtol=1e-5, atol=1e-9), "the recombination is not the default"
        for group, estimator, field, k in estimates:
            config = base.replace(components=("information",), information_estimator=estimator, **{field: k})
            start = time.process_time()
            est = attributor.attribute(prompt, target, config=config)
            seconds = time.process_time() - start
            entry = {"seconds": seconds, "spearman_information": spearman(exact.information[0], est.information[0])}
            if full is not None:
                final = full.flow * (base.beta * full.curvature + base.gamma * est.information)
                entry["spearman_scores"] = spearman(full.scores[0], final[0])
            row[group][str(k)] = entry
        records[rid] = row
        save_json(out, records)
        print(rid, row["n"], round(exact_seconds, 1), {f"{g}:{k}": (round(v["spearman_information"], 3),
                                                                    round(v["seconds"], 1))
                                                       for g in ("ranks", "spans") for k, v in row[g].items()},
              flush=True)


def table(paths) -> None:
    print("| file | records | n (median) | estimate | Spearman I: median / p10 | Spearman scores: median / p10 "
          "| exact I s (median) | estimate s (median) | speed-up (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        records = json.loads(Path(path).read_text())
        rows = list(records.values())
        for group, label in (("ranks", "fisher, rank"), ("spans", "span")):
            for k in rows[0].get(group, {}):
                entries = [r[group][k] for r in rows]
                info = [e["spearman_information"] for e in entries]
                scores = [e["spearman_scores"] for e in entries if "spearman_scores" in e]
                speed = [r["exact_seconds"] / e["seconds"] for r, e in zip(rows, entries)]
                shown = f"{statistics.median(scores):.3f} / {p10(scores):.3f}" if scores else "—"
                n = statistics.median(r["n"] for r in rows)
                print(f"| {Path(path).name} | {len(rows)} | {n:.0f} | {label} {k} "
                      f"| {statistics.median(info):.3f} / {p10(info):.3f} | {shown} "
                      f"| {statistics.median(r['exact_seconds'] for r in rows):.1f} "
                      f"| {statistics.median(e['seconds'] for e in entries):.2f} "
                      f"| {statistics.median(speed):.1f}× |")



def _run_args(parser) -> None:
    parser.add_argument("--ranks", default="8,32", help="fisher ranks, comma-separated ('' for none)")
    parser.add_argument("--spans", default="", help="span estimate spans, comma-separated ('' for none)")
    parser.add_argument("--long", type=int, default=0)
    parser.add_argument("--no-scores", action="store_true", help="skip the final scores (and S)")


if __name__ == "__main__":
    sys.argv[0] = "information_estimators.py"
    run_or_table(__doc__, _run_args, run, table)
