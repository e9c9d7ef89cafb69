"""Per-phase time breakdown of one attribution, with torch.profiler.

    python profiling/profile_attribution.py [--model smollm2-135m] [--prompt P --target T] [--top 15]
    python profiling/profile_attribution.py --n 128 --threads 1   # the demo prompt repeated to 128 tokens
    python profiling/profile_attribution.py --n 512 --threads 1 --precision auto

Prints the engine's phases (labelled ``heta::<phase>`` with record_function) and the most
expensive torch operators inside the whole attribution. Under a split-bf16 stage the split
product's two parts are labelled too (``split_bf16::halves``, ``split_bf16::mkl_gemms``): MKL's
GEMMs run through ctypes, so without the label their time shows only as the phase's self time.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from heta_fast import Attributor, HETAConfig
from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET
from heta_fast.precision import PRECISIONS


def _label_split_product() -> None:
    """Wrap the split product's halves and MKL GEMMs in record_function labels (this process only)."""
    from heta_fast.ops import split_bf16
    from heta_fast.ops.split_bf16 import mkl

    def labelled(name, fn):
        def run(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)
        return run

    split_bf16.split_halves = labelled("split_bf16::halves", split_bf16.split_halves)
    mkl.split_linear = labelled("split_bf16::mkl_gemms", mkl.split_linear)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--target", default=DEMO_TARGET)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--n", type=int, default=0, help="instead of --prompt: the demo prompt's tokens repeated to N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--precision", default="float32", choices=PRECISIONS, help="HETAConfig.precision")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _label_split_product()

    attr = Attributor.from_pretrained(args.model, config=HETAConfig(precision=args.precision))
    prompt = args.prompt
    if args.n:
        ids = attr.tokenizer(args.prompt)["input_ids"]
        prompt = (ids * (args.n // len(ids) + 1))[: args.n]
    attr.attribute(prompt, args.target)  # warm-up: first-call allocations and lazy imports
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        res = attr.attribute(prompt, args.target)
    events = prof.key_averages()
    phases = [e for e in events if e.key.startswith(("heta::", "split_bf16::"))]
    total = sum(e.cpu_time_total for e in phases if e.key.startswith("heta::")) or 1.0
    print(f"one attribution of {len(res.context_tokens)} context tokens -> {res.target_tokens}")
    print(f"{'phase':<28}{'time (ms)':>12}{'share':>9}")
    for e in sorted(phases, key=lambda e: -e.cpu_time_total):
        print(f"{e.key:<28}{e.cpu_time_total / 1e3:>12.1f}{e.cpu_time_total / total:>9.1%}")
    print()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
