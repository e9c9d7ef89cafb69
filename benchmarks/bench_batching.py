"""Would cross-request batching pay on this CPU? Per phase, a group of curated records attributed one
after another (what the engine does) against the same work in shared, padded passes (issue 13).

Default model, one torch thread, CPU time of the calling thread (``time.thread_time``: less
sensitive than wall time to other processes on a shared machine), the minimum over rounds:

* forward: the engine's capture of each record vs one no-grad forward of the whole group padded
  to its longest input (a lower bound for a batched capture: it records nothing);
* curvature: per record the engine's operator (forward + first backward once, then 16 probes in
  the chunks ``probes_per_pass`` gives), vs one padded group whose f is the sum of the records'
  target log-probabilities (the Hessian is block-diagonal across records, so H v gives every
  record its own products): one forward + first backward, then 16 probe sets in passes of about
  as many probe rows as the engine's;
* information: the engine's masked passes, each timed; what packing several records' variants
  into shared passes could save at most is the excess of the short passes over the per-position
  cost of the full ones.

    python -m pytest benchmarks/bench_batching.py -q -s

HETA_BENCH_GROUP=N: records per group (default 4); HETA_BENCH_ROUNDS=R (default 2). No timing assertions.
"""
import os
import time
from pathlib import Path

import pytest
import torch
from torch.func import grad, vjp, vmap

GROUP = int(os.environ.get("HETA_BENCH_GROUP", "4"))
ROUNDS = int(os.environ.get("HETA_BENCH_ROUNDS", "2"))
PROBES = 16
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"
clock = time.thread_time


@pytest.fixture(scope="module")
def group(default_attributor):
    from heta_fast.evaluate.data import load_curated
    from heta_fast.evaluate.runner import pipeline_records
    from heta_fast.request import tokenize_request

    if not DATA.exists():
        pytest.skip(f"{DATA} is not there (../shared/ beside the repository)")
    attr = default_attributor
    return [tokenize_request(attr.tokenizer, r["prompt"], r["target"], attr.adapter.max_length, attr.adapter.vocab_size)
            for r in pipeline_records(attr, load_curated(DATA)[:GROUP])]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _padded(embeds: list[torch.Tensor]) -> torch.Tensor:
    """[B, N, d], each record's rows first, zeros after (causal: rows after a target never reach it)."""
    out = embeds[0].new_zeros(len(embeds), max(e.shape[0] for e in embeds), embeds[0].shape[1])
    for i, e in enumerate(embeds):
        out[i, : e.shape[0]] = e
    return out


def _forward(attr, group):
    from heta_fast.model.capture import CaptureRequest
    from heta_fast.signals import SIGNALS

    adapter, cfg = attr.adapter, attr.config
    need = CaptureRequest.union([SIGNALS[name].capture_request(adapter, cfg) for name in cfg.components])
    embeds = [adapter.embed(r.input_ids) for r in group]
    start = clock()
    for r, e in zip(group, embeds):
        adapter.capture(e, r.target_positions.to(adapter.device), need)
    alone = clock() - start
    x = _padded(embeds)
    start = clock()
    with torch.no_grad():
        adapter.hidden_states(x, None)
    return {"alone": alone, "shared": clock() - start}


def _curvature(attr, group):
    from heta_fast.memory import ModelShape, probes_per_pass
    from heta_fast.signals.curvature.hvp import HessianOperator
    from heta_fast.signals.curvature.target import TargetFunction

    adapter, cfg = attr.adapter, attr.config
    shape = ModelShape.of(adapter.model)
    embeds = [adapter.embed(r.input_ids) for r in group]
    positions = [int(r.target_positions[0]) for r in group]
    tokens = [int(r.target_ids[0]) for r in group]
    times = {"alone primal": 0.0, "alone products": 0.0}
    chunks = []
    for e, p, t in zip(embeds, positions, tokens):
        start = clock()
        op = HessianOperator(TargetFunction(adapter, e[: p + 1], torch.tensor(p), torch.tensor(t)))
        times["alone primal"] += clock() - start
        chunk = probes_per_pass(shape, p + 1, len(adapter.layers), cfg.memory_budget, cfg.max_batch)
        chunks.append(chunk)
        start = clock()
        for first in range(0, PROBES, chunk):
            op(torch.randn(min(chunk, PROBES - first), p + 1, e.shape[1]))
        times["alone products"] += clock() - start
    x = _padded([e[: p + 1] for e, p in zip(embeds, positions)])
    keep = torch.tensor(sorted(set(positions)))
    column = torch.tensor([keep.tolist().index(p) for p in positions])
    token = torch.tensor(tokens)

    def f(h):  # the sum of every record's log p(target): block-diagonal Hessian across records
        logits = adapter.logits(h, keep)[torch.arange(len(group)), column].float()
        return torch.log_softmax(logits, -1).gather(1, token[:, None]).sum()

    start = clock()
    _, hvp = vjp(grad(f), x)
    times["shared primal"] = clock() - start
    sets = max(1, min(chunks) // len(group))  # probe sets per pass: about the engine's probe rows per pass
    start = clock()
    for first in range(0, PROBES, sets):
        vmap(hvp)(torch.randn(min(sets, PROBES - first), *x.shape))
    times["shared products"] = clock() - start
    return times


def _information(attr, group):
    from heta_fast.signals.information import signal as info_signal

    timed, original = [], info_signal._packed_kl

    def packed_kl(adapter, prefix, seq, batch, *args):
        start = clock()
        out = original(adapter, prefix, seq, batch, *args)
        timed.append((batch.positions, clock() - start))
        return out

    info_signal._packed_kl = packed_kl
    try:
        start = clock()
        for r in group:
            attr._attribute(r, attr.config.replace(components=("information",)))
        total = clock() - start
    finally:
        info_signal._packed_kl = original
    full = [(p, t) for p, t in timed if p >= 512]
    rate = sum(t for _, t in full) / sum(p for p, _ in full)
    excess = sum(t - rate * p for p, t in timed if p < 512)
    return {"alone with capture": total, "passes": len(timed), "short passes": sum(p < 512 for p, _ in timed),
            "ms/position full": 1000 * rate, "short-pass excess": excess}


@pytest.mark.parametrize("phase", ["forward", "curvature", "information"])
def test_cross_request_batching_per_phase(default_attributor, group, phase):
    run = {"forward": _forward, "curvature": _curvature, "information": _information}[phase]
    rounds = [run(default_attributor, group) for _ in range(ROUNDS)]
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    lengths = [r.input_ids.numel() for r in group]
    load = os.getloadavg()[0]
    per = {k: (v / len(group) if isinstance(v, float) and "ms/" not in k else v) for k, v in best.items()}
    shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in per.items())
    print(f"\n{phase}: {len(group)} records of {lengths} tokens, CPU s per record (min of {ROUNDS}): {shown}; "
          f"load {load:.2f}")
