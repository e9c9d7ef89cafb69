"""Quality of the fast curvature estimators against the exact one, on the curated distractor set.

    python scripts/curvature_quality.py --limit 4            # the first 4 examples
    python scripts/curvature_quality.py --indices 0:100:11 --out q.json   # examples 0, 11, 22, ...
    python scripts/curvature_quality.py --summary-only --out q.json --merge q2.json   # summary of both files
    python scripts/curvature_quality.py --documents 3 --indices 0,33 --out long.json    # longer inputs

For each example of ../shared/data/curated_qa_100.json (prompt = input_text + "\\nAnswer:",
target = the first token of " " + answer) on the default model (float32, CPU): one Hessian
operator is built and every estimator reads it, so all of them see the same H. Ground truth is
the exact block-restricted Hutchinson estimator with m = 64 probes; exact m = 10 (other probes,
seed + 1) is compared too. For each estimator: Spearman correlation of S over the context
tokens, and of the final Attr = M ⊙ (β S + γ I) (flow gate and information from the engine,
β = γ = 0.5), against exact m = 64 and m = 10; median and 10th percentile over examples.

Results are appended per example to a JSON file (default docs/results/curvature_quality.json,
the recorded measurement), so an interrupted run resumes where it stopped and a later run extends
it. The exact m = 64 ground truth
costs n·64 HVPs per example (≈ 3,600 at n ≈ 56): this is the slow part on a CPU.

Longer inputs (``--documents K``): example i becomes a K-document prompt, the narrative and support
segments of records i, i+11, i+22, ... (mod 100: K different questions and distractors), record i
moved to place i mod K, then record i's question; the target is record i's answer, so one support sentence in K
carries it and the others are distractors. At K = 3 and 6, n ≈ 137 and 258; the ground truth there
is exact m = 10 only (m = 64 would cost n·64 HVPs of a longer input), see ``--m64-every``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from measure_cli import curated, gold_target, save_json, spearman

ROOT = Path(__file__).resolve().parents[1]

# name -> HETAConfig overrides of one estimator setting.
METHODS = {
    "exact_m10": dict(estimator="exact", num_probes=10, seed=1),
    "probing_R1_K16": dict(estimator="probing", probing_repeats=1, probing_patterns=16),
    "probing_R2_K8": dict(estimator="probing", probing_repeats=2, probing_patterns=8),
    "probing_R2_K16": dict(estimator="probing", probing_repeats=2, probing_patterns=16),
    "probing_R4_K16": dict(estimator="probing", probing_repeats=4, probing_patterns=16),
    "sketch_k32": dict(estimator="sketch", sketch_rank=32),
    "sketch_k64": dict(estimator="sketch", sketch_rank=64),
}
GROUND_TRUTH = dict(estimator="exact", num_probes=64, seed=0)


def examples(documents: int = 1):
    """(id, prompt, example) per curated record (its gold target is the example's); ``documents`` > 1
    builds the K-document prompts of the module docstring (K = 1 is the record's own input_text:
    narrative <s> support <s> question)."""
    records = curated()
    for i, ex in enumerate(records):
        parts = [records[(i + 11 * k) % len(records)] for k in range(1, documents)]
        parts.insert(i % documents, ex)  # the answer-bearing document's place varies with i
        body = " <s> ".join(f"{r.prompt[slice(*r.distractor)]} <s> {r.prompt[slice(*r.support)]}" for r in parts)
        ex_id = ex.id if documents == 1 else f"docs{documents}_{ex.id}"
        yield ex_id, f"{body} <s> Question: {ex.meta['question']}{ex.meta['cue']}", ex


def chosen_indices(spec: str | None, limit: int, total: int) -> list[int]:
    """Example positions to evaluate: ``spec`` as "3,7,12" or a slice "start:stop:step"; else the first ``limit``."""
    if spec is None:
        return list(range(min(limit, total)))
    if ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        return list(range(total))[slice(*parts)]
    return [int(p) for p in spec.split(",") if p.strip()]


def run_example(attributor, prompt: str, example, base, ground_truth: bool = True) -> dict:
    from heta_fast.request import tokenize_request
    from heta_fast.signals.curvature import estimate
    from heta_fast.signals.curvature.operators import OperatorFactory

    tok = attributor.tokenizer
    first = gold_target(attributor, example)
    adapter = attributor.adapter
    req = tokenize_request(tok, prompt, first, adapter.max_length, attributor.model.config.vocab_size)
    n_ctx = req.n_context
    embeds = adapter.embed(req.input_ids)
    position = n_ctx - 1
    signals = attributor.attribute(req.context_ids, req.target_ids)  # flow + information only
    flow, info = signals.flow[0].double(), signals.information[0].double()

    rows = torch.arange(n_ctx)
    record = {"n_context": n_ctx, "target": tok.decode(first), "S": {}, "hvps": {}, "seconds": {}}
    shared = None  # the whole-input operator, built once and read by every estimator
    methods = [*METHODS.items()] + ([("exact_m64", GROUND_TRUTH)] if ground_truth else [])  # cheap first
    for name, overrides in methods:
        cfg = base.replace(**overrides)
        factory = CountingFactory(OperatorFactory(adapter, embeds, position, first[0], cfg), shared)
        clock = time.perf_counter()
        s = estimate(factory, rows, n_ctx, cfg)
        record["seconds"][name] = round(time.perf_counter() - clock, 3)
        record["hvps"][name] = factory.applied
        record["S"][name] = s.tolist()
        shared = factory.shared
    record["flow"], record["information"] = flow.tolist(), info.tolist()
    return record


class CountingFactory:
    """An operator factory that shares the whole-input operator across estimators and counts
    the curvature-vector products every operator it hands out was applied to."""

    def __init__(self, inner, shared=None):
        self.inner, self.shared, self.handed = inner, shared, []
        self.x, self.position, self.suffixes = inner.x, inner.position, inner.suffixes

    def __call__(self, start: int = 0):
        if start == 0 and self.shared is not None:
            result = self.shared
        else:
            result = self.inner(start)
            if start == 0:
                self.shared = result
        self.handed.append((result[0], result[0].applied))
        return result

    @property
    def applied(self) -> int:
        return sum(op.applied - before for op, before in self.handed)


def attr_of(record: dict, name: str, beta=0.5, gamma=0.5) -> np.ndarray:
    s, info = np.asarray(record["S"][name]), np.asarray(record["information"])
    return np.asarray(record["flow"]) * (beta * s + gamma * info)


def summarise(records: dict) -> str:
    names = list(METHODS)
    with_m64 = sum("exact_m64" in r["S"] for r in records.values())
    lines = [f"{len(records)} examples ({with_m64} with the exact m=64 ground truth); Spearman over context tokens, "
             "median / 10th percentile (number of examples) over examples",
             "", "| estimator | HVPs (median) | S vs exact m=64 | Attr vs exact m=64 | S vs exact m=10 "
                 "| Attr vs exact m=10 |",
             "|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for ref in ("exact_m64", "exact_m10"):
            if name == ref:
                cells += ["—", "—"]
                continue
            have = [r for r in records.values() if ref in r["S"] and name in r["S"]]
            s = [spearman(r["S"][name], r["S"][ref]) for r in have]
            a = [spearman(attr_of(r, name), attr_of(r, ref)) for r in have]
            cells += [_stat(s, len(have)), _stat(a, len(have))]
        counted = [r["hvps"][name] for r in records.values() if name in r["hvps"]]
        if not counted:
            continue
        lines.append(f"| {name} | {int(np.median(counted))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stat(values, count: int) -> str:
    v = np.asarray([x for x in values if not math.isnan(x)])
    if len(v) == 0:
        return "n/a"
    return f"{np.median(v):.3f} / {np.percentile(v, 10):.3f} ({count})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4, help="examples to evaluate (from the start of the set)")
    parser.add_argument("--indices", default=None,
                        help='example positions: "0,11,22" or a slice "0:100:11" (default: the first --limit)')
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "curvature_quality.json",
                        help="results file, continued if it exists (default: the recorded one, docs/results/)")
    parser.add_argument("--merge", type=Path, nargs="+", default=(),
                        help="more results files (e.g. of other processes) to include in the summary")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--m64-every", type=int, default=1,
                        help="compute the exact m=64 ground truth on every k-th example only (the others are "
                             "compared with exact m=10); 0: on none")
    parser.add_argument("--documents", type=int, default=1,
                        help="K > 1: longer K-document prompts built from the curated records (module docstring)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 avoids OpenMP oversubscription on a shared machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    records = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.summary_only:
        from heta_fast import Attributor, HETAConfig

        base = HETAConfig(components=("flow", "information"))
        attributor = Attributor.from_pretrained("smollm2-135m", config=base)
        everything = list(examples(args.documents))
        for i in chosen_indices(args.indices, args.limit, len(everything)):
            ex_id, prompt, example = everything[i]
            if ex_id in records:
                continue
            clock = time.perf_counter()
            truth = args.m64_every > 0 and i % args.m64_every == 0
            records[ex_id] = run_example(attributor, prompt, example, base, ground_truth=truth)
            save_json(args.out, records, indent=None)
            print(f"{ex_id}: n={records[ex_id]['n_context']} in {time.perf_counter() - clock:.0f} s", flush=True)
    for path in args.merge:
        records = {**json.loads(path.read_text()), **records}
    print(summarise(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
