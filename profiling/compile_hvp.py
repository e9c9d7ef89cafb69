"""torch.compile of one batched HVP pass against eager, on the default model (issue 16 §5 follow-up).

    python profiling/compile_hvp.py [--probes 16] [--threads 1] [--rounds 2]

The curvature's batched product (reverse over reverse: ``vjp(grad(f))`` then a vmapped backward,
signals/curvature/hvp.py) on the first curated record's prompt (``input_text + "\\nAnswer:"``,
59 tokens), target token 7, one pass of ``--probes`` random vectors: prints the eager time, the
compile time (inductor, ``dynamic=False``), the relative difference of the compiled result and
CPU seconds per pass of both, alternated. Nothing of the engine uses the compiled form (yet).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch
    from torch.func import grad, vjp, vmap

    from heta_fast import Attributor
    from heta_fast.signals.curvature.target import TargetFunction

    torch.set_num_threads(args.threads)
    attributor = Attributor.from_pretrained("smollm2-135m", device="cpu")
    example = json.loads(DATA.read_text(encoding="utf-8"))["examples"][0]
    ids = attributor.tokenizer(example["input_text"] + "\nAnswer:", return_tensors="pt")["input_ids"][0]
    target = TargetFunction(attributor.adapter, attributor.adapter.embed(ids), torch.tensor(len(ids) - 1),
                            torch.tensor(7))
    h0 = target.primal()

    def products(h0, vectors):
        _, pullback = vjp(grad(target.log_prob), h0)
        return vmap(pullback)(vectors)[0]

    vectors = torch.randn(args.probes, *h0.shape, generator=torch.Generator().manual_seed(0))
    start = time.process_time()
    want = products(h0, vectors)
    print(f"n={len(ids)}, {args.probes} probes: eager first pass {time.process_time() - start:.2f} s CPU")
    start = time.time()
    compiled = torch.compile(products, dynamic=False)
    got = compiled(h0, vectors)
    error = float((got - want).abs().max() / want.abs().max())
    print(f"compiled in {time.time() - start:.1f} s wall; max |difference| / max |H v| = {error:.2e}")
    for _ in range(args.rounds):
        for name, fn in (("eager", products), ("compiled", compiled)):
            start = time.process_time()
            fn(h0, vectors)
            print(f"{name}: {time.process_time() - start:.2f} s CPU per pass")


if __name__ == "__main__":
    main()
