"""A whole generation with fewer curvature products per target token: cost and each row's quality (issue 16 §3).

    python scripts/generation_quality.py --out docs/results/generation_quality.json [--tokens 64] \\
        [--settings 1x1,2x1,4x1] [--prompts demo,0,1] [--threads 1]

Per prompt (``demo``: the demo prompt; an integer k: curated record k's ``input_text + "\\nAnswer:"``)
the default model's greedy continuation of ``--tokens`` tokens is attributed in one request:

- with the default configuration (probing, 8 patterns x 2 repeats = 16 products per target): the
  reference rows, each equal to its target attributed alone (tests/signals/test_many_targets.py);
- with each setting ``PxR`` (``probing_patterns`` x ``probing_repeats``, P x R products per target;
  ``PxRsK``: with seed K, so ``8x2s1`` is the default estimator on other random vectors, the
  reference's own noise), the same request; per target row, the Spearman correlation over the
  context tokens of the scores and of S against the reference row.

Times (CPU seconds of the process): one single-token attribution of the prompt (its first
generated token, default configuration) at the start and again at the end, the reference
request and each setting's, in one process, one after another;
the ratio to the single token is what issue 16 §3 bounds (≤ 8x for 64 tokens). Results go to
``--out`` per prompt; a prompt already there is skipped, so a killed run continues.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from measure_cli import DATA, p10, save_json


def spearman_rows(a, b) -> list[float]:
    """Spearman correlation of each row of a against the same row of b ([T, n] tensors; ties by average rank)."""
    from heta_fast.evaluate.robustness.ranks import spearman

    return [spearman(x, y) for x, y in zip(a, b)]


def _summary(values: list[float | None]) -> dict:
    undefined = sum(v is None for v in values)  # a constant row has no ranks
    values = [v for v in values if v is not None]
    return {"median": statistics.median(values), "p10": p10(values), "min": min(values),
            "rows_at_least_0.95": sum(v >= 0.95 for v in values), "rows": len(values), "undefined": undefined}


def parse_setting(text: str) -> tuple[int, int, int | None]:
    """'PxR' or 'PxRsK' -> (patterns, repeats, seed or None)."""
    products, _, seed = text.partition("s")
    patterns, repeats = (int(x) for x in products.split("x"))
    return patterns, repeats, int(seed) if seed else None


def measure(attr, prompt: str, tokens: int, settings: list[str]) -> dict:
    import torch

    ids = attr.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = attr.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    generation = out[0, ids.shape[1]:].tolist()

    def timed(target_ids, config):
        start = time.process_time()
        result = attr.attribute(prompt, target_ids, config=config)
        return result, time.process_time() - start

    base = attr.config
    _, single_before = timed(generation[:1], base)
    reference, reference_s = timed(generation, base)
    entry = {"n_context": len(reference.context_tokens), "targets": len(generation), "settings": {},
             "reference_phases_s": {k: round(v, 2) for k, v in reference.timings.items()}}
    for name in settings:
        patterns, repeats, seed = parse_setting(name)
        config = base.replace(probing_patterns=patterns, probing_repeats=repeats,
                              seed=base.seed if seed is None else seed)
        result, seconds = timed(generation, config)
        score_rows = spearman_rows(result.scores, reference.scores)
        entry["settings"][name] = {
            "products_per_target": patterns * repeats, "cpu_s": round(seconds, 2),
            "phases_s": {k: round(v, 2) for k, v in result.timings.items()},
            "scores": _summary(score_rows),
            "curvature": _summary(spearman_rows(result.curvature, reference.curvature)),
            "scores_rows": [None if v is None else round(v, 4) for v in score_rows]}
        print(json.dumps({name: {k: v for k, v in entry["settings"][name].items() if k != "scores_rows"}}), flush=True)
    # The single token again at the end: the ratios divide by the mean of both, so that a change of
    # the machine's load during the run shows as a spread between the two.
    _, single_after = timed(generation[:1], base)
    single_s = 0.5 * (single_before + single_after)
    entry["single_token_cpu_s"] = [round(single_before, 2), round(single_after, 2)]
    entry["reference"] = {"products_per_target": base.probing_patterns * base.probing_repeats,
                          "cpu_s": round(reference_s, 2), "x_single": round(reference_s / single_s, 2)}
    for row in entry["settings"].values():
        row["x_single"] = round(row["cpu_s"] / single_s, 2)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--settings", default="1x1,2x1,4x1")
    parser.add_argument("--prompts", default="demo")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from heta_fast.cli import DEMO_PROMPT
    from heta_fast.engine import Attributor
    from heta_fast.evaluate.data import load_curated

    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    for name in settings:
        parse_setting(name)  # a bad setting stops the run before the model loads
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    attr = Attributor.from_pretrained("smollm2-135m", device="cpu")
    for name in args.prompts.split(","):
        key = f"{name}:{args.tokens}"
        if key in results:
            continue
        prompt = DEMO_PROMPT if name == "demo" else load_curated(DATA)[int(name)].prompt  # input_text + cue
        results[key] = measure(attr, prompt, args.tokens, settings)
        results[key]["torch_threads"] = args.threads
        save_json(out, results)
        print(key, json.dumps({k: v for k, v in results[key].items() if k != "settings"}), flush=True)


if __name__ == "__main__":
    main()
