"""Per-phase time breakdown of one attribution, with torch.profiler.

    python profiling/profile_attribution.py [--model smollm2-135m] [--prompt P --target T] [--top 15]

Prints the engine's phases (labelled ``heta::<phase>`` with record_function) and the most
expensive torch operators inside the whole attribution.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from heta_fast import Attributor, HETAConfig
from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--target", default=DEMO_TARGET)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    attr = Attributor.from_pretrained(args.model, config=HETAConfig())
    attr.attribute(args.prompt, args.target)  # warm-up: first-call allocations and lazy imports
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        res = attr.attribute(args.prompt, args.target)
    events = prof.key_averages()
    phases = [e for e in events if e.key.startswith("heta::")]
    total = sum(e.cpu_time_total for e in phases) or 1.0
    print(f"one attribution of {len(res.context_tokens)} context tokens -> {res.target_tokens}")
    print(f"{'phase':<28}{'time (ms)':>12}{'share':>9}")
    for e in sorted(phases, key=lambda e: -e.cpu_time_total):
        print(f"{e.key:<28}{e.cpu_time_total / 1e3:>12.1f}{e.cpu_time_total / total:>9.1%}")
    print()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
