"""The information term's second-order estimate against the exact term, per record (issue 16 §2).

    python scripts/information_estimators.py run OUT.json [--start A --stop B] [--ranks 8,32] [--long N]
    python scripts/information_estimators.py table docs/results/information_fisher_*.json

``run``: default model, one torch thread, curated records A..B (prompt ``input_text +
"\\nAnswer:"``, target the first token of ``" " + answer``); with ``--long N`` instead, prompts of
about N tokens made of consecutive curated records' texts, then the record's question (one
record per start). Per record: n, the seconds of the exact term and of the estimate at each rank,
the Spearman of the estimate against the exact I, and of the final scores (the default form,
M · (β S + γ I), with the same M and S) against the exact final scores.
``table``: the median and 10th percentile of each Spearman and the median speed-up, per file.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from measure_cli import curated_examples, p10, run_or_table


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def _prompts(args, tokenizer):
    examples = curated_examples()
    for k in range(args.start, min(args.stop, len(examples))):
        ex = examples[k]
        target = tokenizer(" " + ex["answer"], add_special_tokens=False)["input_ids"][:1]
        if not args.long:
            yield ex["id"], ex["input_text"] + "\nAnswer:", target
            continue
        docs, j = [], k
        while len(tokenizer("\n\n".join(docs + [ex["input_text"]]))["input_ids"]) < args.long:
            docs.append(examples[(j + 1) % len(examples)]["input_text"])
            j += 1
        yield ex["id"], "\n\n".join(docs[:-1] + [ex["input_text"]]) + "\nAnswer:", target


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from heta_fast import Attributor, HETAConfig

    attributor = Attributor.from_pretrained("smollm2-135m", device="cpu")
    ranks = [int(r) for r in args.ranks.split(",")]
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else {}
    for rid, prompt, target in _prompts(args, attributor.tokenizer):
        if rid in records:
            continue
        base = HETAConfig()
        start = time.process_time()
        exact = attributor.attribute(prompt, target, config=base.replace(components=("information",)))
        exact_seconds = time.process_time() - start
        row = {"n": int(exact.information.shape[1]), "exact_seconds": exact_seconds, "ranks": {}}
        full = None
        if not args.long:  # the final scores need S: at long n its cost is beside the point here
            full = attributor.attribute(prompt, target, config=base)
            recombined = full.flow * (base.beta * full.curvature + base.gamma * full.information)
            assert torch.allclose(recombined, full.scores, rtol=1e-5, atol=1e-9), "the recombination is not the default"
        for k in ranks:
            config = base.replace(components=("information",), information_estimator="fisher", information_rank=k)
            start = time.process_time()
            est = attributor.attribute(prompt, target, config=config)
            seconds = time.process_time() - start
            entry = {"seconds": seconds, "spearman_information": _spearman(exact.information[0], est.information[0])}
            if full is not None:
                final = full.flow * (base.beta * full.curvature + base.gamma * est.information)
                entry["spearman_scores"] = _spearman(full.scores[0], final[0])
            row["ranks"][str(k)] = entry
        records[rid] = row
        out.write_text(json.dumps(records, indent=1))
        print(rid, row["n"], {k: round(v["spearman_information"], 3) for k, v in row["ranks"].items()}, flush=True)


def table(paths) -> None:
    print("| file | records | n (median) | rank | Spearman I: median / p10 | Spearman scores: median / p10 "
          "| exact I s (median) | estimate s (median) | speed-up (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        records = json.loads(Path(path).read_text())
        rows = list(records.values())
        for k in rows[0]["ranks"]:
            info = [r["ranks"][k]["spearman_information"] for r in rows]
            scores = [r["ranks"][k]["spearman_scores"] for r in rows if "spearman_scores" in r["ranks"][k]]
            speed = [r["exact_seconds"] / r["ranks"][k]["seconds"] for r in rows]
            shown = f"{statistics.median(scores):.3f} / {p10(scores):.3f}" if scores else "—"
            print(f"| {Path(path).name} | {len(rows)} | {statistics.median(r['n'] for r in rows):.0f} | {k} "
                  f"| {statistics.median(info):.3f} / {p10(info):.3f} | {shown} "
                  f"| {statistics.median(r['exact_seconds'] for r in rows):.1f} "
                  f"| {statistics.median(r['ranks'][k]['seconds'] for r in rows):.2f} "
                  f"| {statistics.median(speed):.1f}× |")



def _run_args(parser) -> None:
    parser.add_argument("--ranks", default="8,32")
    parser.add_argument("--long", type=int, default=0)


if __name__ == "__main__":
    sys.argv[0] = "information_estimators.py"
    run_or_table(__doc__, _run_args, run, table)
