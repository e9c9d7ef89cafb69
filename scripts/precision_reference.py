"""Which P_orig the bf16 information term should compare against (issue 16 §1).

    python scripts/precision_reference.py run OUT.json [--start A --stop B]
    python scripts/precision_reference.py table OUT.json [...]

``run``: default model (float32 weights), one torch thread, curated records A..B (prompt
``input_text + "\\nAnswer:"``, target the first token of ``" " + answer``). Each record's I is
computed three ways through the information term's own function, on the same input embeddings
and mask vectors:

- ``float32``: P_orig and every masked pass in float32 (the reference; its largest difference
  from the engine's own float32 I is recorded, a check of this harness);
- ``same``: P_orig and the masked passes (with their keys and values of the unmasked prefix)
  under bf16 autocast, what ``precision="bfloat16"`` runs: both sides of the KL carry the same
  rounding;
- ``mixed``: P_orig in float32, the masked passes under bf16 autocast.

Per record: the Spearman of ``same`` and of ``mixed`` against ``float32``, the median relative
error of each on the float32 term's largest tenth, and seconds. ``table``: medians, 10th
percentiles and the gate (median >= 0.99, 10th percentile >= 0.97) for both.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from measure_cli import gold_target, p10, pending_examples, run_or_table, save_json, spearman

VARIANTS = ("same", "mixed")


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from heta_fast import Attributor, HETAConfig
    from heta_fast.precision import stage_precision
    from heta_fast.signals.information.masking import mask_vectors
    from heta_fast.signals.information.signal import information

    attributor = Attributor.from_pretrained("smollm2-135m", device="cpu")
    adapter, config = attributor.adapter, HETAConfig(components=("information",))
    out = Path(args.out)
    records, pending = pending_examples(out, args.start, args.stop)
    for _, ex in pending:
        target = gold_target(attributor, ex)
        engine = attributor.attribute(ex.prompt, target, config=config)
        n_context = len(engine.context_ids)
        embeds = adapter.embed(torch.tensor(engine.context_ids + engine.target_ids[:-1]))  # [n, d]
        positions = torch.arange(n_context - 1, n_context - 1 + len(engine.target_ids))
        masks = mask_vectors(config.mask_scheme, embeds[:n_context], adapter.model.get_input_embeddings(),
                             attributor.tokenizer)

        def orig(mode: str) -> torch.Tensor:
            with torch.no_grad(), stage_precision(mode, "forward", adapter):
                return adapter.log_probs(embeds[None], positions)[0]  # [T, V], float32 (the head runs in float32)

        def info(reference: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
            start = time.perf_counter()
            with stage_precision(mode, "forward", adapter):
                value = information(adapter, embeds, positions, n_context, masks, reference, config)[0]
            return value, time.perf_counter() - start

        reference, seconds_f32 = info(orig("float32"), "float32")
        results = {"same": info(orig("bfloat16"), "bfloat16"), "mixed": info(orig("float32"), "bfloat16")}
        top = reference.argsort(descending=True)[: max(1, reference.numel() // 10)]
        row = {"n": n_context, "engine_max_abs_difference": float((reference - engine.information[0]).abs().max()),
               "seconds": {"float32": seconds_f32, **{v: results[v][1] for v in VARIANTS}}}
        for variant, (value, _) in results.items():
            row[variant] = {"spearman": spearman(reference, value),
                            "top_tenth_relative_error": float(((value[top] - reference[top]).abs()
                                                               / reference[top]).median())}
        records[ex.id] = row
        save_json(out, records)
        print(ex.id, {v: round(row[v]["spearman"], 4) for v in VARIANTS},
              f"harness vs engine {row['engine_max_abs_difference']:.1e}", flush=True)


def table(paths) -> None:
    rows = {}
    for path in paths:
        rows.update(json.loads(Path(path).read_text()))
    values = list(rows.values())
    print("| P_orig | masked passes | records | Spearman of I vs float32: median | 10th percentile "
          "| gate (≥ 0.99 / ≥ 0.97) | I's largest tenth: median relative error |")
    print("|---|---|---|---|---|---|---|")
    for variant, orig in (("same", "bf16"), ("mixed", "float32")):
        got = sorted(r[variant]["spearman"] for r in values)
        median, low = statistics.median(got), p10(got)
        gate = "met" if median >= 0.99 and low >= 0.97 else "not met"
        error = statistics.median(r[variant]["top_tenth_relative_error"] for r in values)
        print(f"| {orig} | bf16 (autocast) | {len(got)} | {median:.4f} | {low:.4f} | {gate} | {error:.4f} |")
    worst = max(r["engine_max_abs_difference"] for r in values)
    print(f"\nharness float32 I against the engine's float32 I: largest absolute difference {worst:.1e}")


if __name__ == "__main__":
    sys.argv[0] = "precision_reference.py"
    run_or_table(__doc__, lambda parser: None, run, table)
