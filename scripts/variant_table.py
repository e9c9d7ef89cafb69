"""Rebuild EVALUATION.md's table of HETA variants (sinks, term scales) from the per-record file.

    python scripts/variant_table.py docs/results/sinks_scales_30.json

Prints, per variant, the mean DSA, F1 and first-position mass, and the paired difference of each
metric against the paper's form ("keep") with a 95% bootstrap interval (4000 resamples, seed 0).
"""
from __future__ import annotations

import json
import random
import sys


def paired(diffs: list[float], resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95% percentile-bootstrap interval."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(resamples))
    return sum(diffs) / len(diffs), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main(path: str) -> None:
    variants = json.load(open(path, encoding="utf-8"))["variants"]
    base = variants["keep"]["records"]
    print("| variant | n | DSA ↑ | F1 ↑ | first-position mass | ΔDSA vs paper | ΔF1 vs paper |")
    print("|---|---|---|---|---|---|---|")
    for name, variant in variants.items():
        recs = variant["records"]
        keys = sorted(recs)
        mean = {m: sum(recs[k][m] for k in keys) / len(keys) for m in ("dsa", "f1", "first_mass")}
        deltas = []
        for m in ("dsa", "f1"):
            d, lo, hi = paired([recs[k][m] - base[k][m] for k in keys])
            deltas.append("—" if name == "keep" else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        cfg = ", ".join(f"{k}={v}" for k, v in variant["config"].items())
        print(f"| {cfg} | {len(keys)} | {mean['dsa']:.3f} | {mean['f1']:.3f} | {mean['first_mass']:.3f} | "
              f"{deltas[0]} | {deltas[1]} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/sinks_scales_30.json")
