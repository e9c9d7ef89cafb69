"""Every CUDA path of heta-fast against the CPU float32 results, then the end-to-end timing: one table.

    python profiling/gpu_check.py [--quick] [--lengths 128,512,2048] [--json out.json]

On a machine with CUDA, in one process and in well under ten minutes on one GPU, it runs:

- each Triton kernel (flow step, value norms, vocabulary KL; with a sliding window and with
  soft-capping) against the op's eager reference on the CPU, on the shapes of the kernel tests
  and in float32, float16 and bfloat16;
- the engine's CUDA paths against the same attribution on the CPU in float32, on the default
  model: the streaming capture and flow gate, the packed masked passes of the information
  term, the batched HVPs with and without CUDA graphs, and FlashAttention-2 for the masked
  passes when ``flash-attn`` is installed (half-precision model);
- the default attribution at n = 128 / 512 / 2048 context tokens in float32 and bfloat16:
  time and peak GPU memory.

It prints one table (check, pass/fail, worst error against its tolerance, seconds, peak GPU
MiB) and exits 0 when every check passed, 1 when one failed. Without CUDA it prints one line
and exits 2 at once: nothing was checked. ``--quick`` runs the kernel checks only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

# Relative tolerances of each dtype against a float32 CPU result (the kernel tests' table).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# The engine's CUDA paths against the CPU in float32: kernels reorder sums, so a little slack.
ENGINE_TOLERANCE = 2e-3


@dataclass
class Row:
    """One line of the table."""

    check: str
    ok: bool | None          # None: not run (e.g. flash-attn missing), with the reason in ``note``
    worst: float | None      # worst relative error found
    tolerance: float | None
    seconds: float
    peak_mib: float | None
    note: str = ""


def worst_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(max |want|, tiny), in float64 on the CPU; inf if shapes differ or got has NaN."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape or not torch.isfinite(got).all():
        return float("inf")
    scale = float(want.abs().max()) if want.numel() else 0.0
    return float((got - want).abs().max()) / max(scale, 1e-30) if want.numel() else 0.0


def compare(check: str, got, want, tolerance: float, seconds: float, peak_mib: float | None = None) -> Row:
    """A row for ``got`` against ``want`` (tensors, or tuples of tensors compared pairwise)."""
    pairs = zip(got, want) if isinstance(got, (tuple, list)) else [(got, want)]
    worst = max(worst_relative_error(g, w) for g, w in pairs)
    return Row(check, worst <= tolerance, worst, tolerance, seconds, peak_mib)


def render_table(rows: list[Row]) -> str:
    """The table as fixed-width text."""
    head = ("check", "result", "worst rel. error", "tolerance", "seconds", "peak GPU MiB")
    lines = [head]
    for r in rows:
        result = "skip" if r.ok is None else ("pass" if r.ok else "FAIL")
        lines.append((r.check + (f" ({r.note})" if r.note else ""), result,
                      "" if r.worst is None else f"{r.worst:.2e}", "" if r.tolerance is None else f"{r.tolerance:.0e}",
                      f"{r.seconds:.2f}", "" if r.peak_mib is None else f"{r.peak_mib:.0f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def exit_code(rows: list[Row]) -> int:
    """0 if every check that ran passed, 1 otherwise."""
    return 0 if all(r.ok is not False for r in rows) else 1


def _timed(fn: Callable, device: torch.device):
    """(result, seconds, peak MiB on ``device`` or None) of ``fn()``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return out, time.perf_counter() - start, peak


# ----------------------------------------------------------------------------- kernels
def _flow_case(n: int, heads: int, kv: int, dh: int, targets: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, dh, generator=g)
    k = torch.randn(kv, n, dh, generator=g)
    r = torch.rand(targets, n, generator=g)
    r[:, n - targets:] += 1.0
    vn = torch.rand(heads, n, generator=g) + 0.1
    return q, k, r / r.sum(-1, keepdim=True), vn


def kernel_rows(device: torch.device, dtypes=(torch.float32, torch.float16, torch.bfloat16),
                shapes=((129, 9, 3, 64), (1271, 4, 1, 32))) -> list[Row]:
    """Each Triton kernel on ``device`` against the op's eager reference in float32 on the CPU."""
    from heta_fast.kernels.flow import flow_step_triton
    from heta_fast.kernels.value_norm import value_norm_triton
    from heta_fast.kernels.vocab_kl import vocab_kl_triton

    from heta_fast.ops.flow import flow_step_reference, lse_reference
    from heta_fast.ops.value_norm import value_norm_reference
    from heta_fast.ops.vocab_kl import vocab_kl_reference

    rows = []
    for n, heads, kv, dh in shapes:
        q, k, r, vn = _flow_case(n, heads, kv, dh, targets=3)
        scale = dh ** -0.5
        for window, softcap in ((None, None), (17, None), (None, 30.0)):
            lse = lse_reference(q, k, scale, window, softcap=softcap)
            want = flow_step_reference(q, k, lse, scale, r, vn, window, softcap=softcap)
            for dtype in dtypes:
                args = [t.to(device=device, dtype=dtype) for t in (q, k, lse)]
                got, seconds, peak = _timed(lambda: flow_step_triton(args[0], args[1], args[2], scale, r.to(device),
                                                                     vn.to(device), window, softcap=softcap), device)
                label = f"kernel flow_step n={n} H={heads}/{kv} window={window} softcap={softcap} {_name(dtype)}"
                rows.append(compare(label, got, want, TOLERANCE[dtype], seconds, peak))
        g = torch.Generator().manual_seed(1)
        v, w_o = torch.randn(kv, n, dh, generator=g), torch.randn(heads, dh, 96, generator=g) / dh ** 0.5
        want = value_norm_reference(v, w_o)
        for dtype in dtypes:
            got, seconds, peak = _timed(lambda: value_norm_triton(v.to(device, dtype), w_o.to(device, dtype)), device)
            rows.append(compare(f"kernel value_norm n={n} H={heads}/{kv} {_name(dtype)}", got, want, TOLERANCE[dtype],
                                seconds, peak))
    g = torch.Generator().manual_seed(2)
    vocab, d, batch, targets = 1271, 64, 37, 3
    hidden, weight = torch.randn(batch, d, generator=g), torch.randn(vocab, d, generator=g) / d ** 0.5
    ref = torch.log_softmax(torch.randn(targets, vocab, generator=g), -1)
    index = torch.randint(0, targets, (batch,), generator=g)
    for softcap in (None, 20.0):
        want = vocab_kl_reference(hidden, weight, ref, index, softcap=softcap)
        for dtype in dtypes:
            got, seconds, peak = _timed(lambda: vocab_kl_triton(hidden.to(device, dtype), weight.to(device, dtype),
                                                                ref.to(device), index.to(device), softcap=softcap),
                                        device)
            rows.append(compare(f"kernel vocab_kl V={vocab} B={batch} softcap={softcap} {_name(dtype)}", got, want,
                                TOLERANCE[dtype], seconds, peak))
    return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- engine paths
def engine_rows(device: torch.device, prompt: str | None = None, target: str | None = None) -> list[Row]:
    """The engine's CUDA paths against the CPU float32 attribution of ``prompt`` (default: the demo's)."""
    from heta_fast import Attributor, HETAConfig
    from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET
    from heta_fast.model.attention import switch

    prompt, target = prompt or DEMO_PROMPT, target or DEMO_TARGET
    cpu = Attributor.from_pretrained("smollm2-135m", device="cpu")
    want = cpu.attribute(prompt, target)
    gpu = Attributor.from_pretrained("smollm2-135m", device=str(device))
    rows = []
    for label, config in (("capture + flow gate", HETAConfig(components=("flow",))),
                          ("packed masked passes (information)", HETAConfig(components=("information",))),
                          ("batched HVPs, CUDA graphs", HETAConfig(components=("curvature",), cuda_graphs=True)),
                          ("batched HVPs, eager", HETAConfig(components=("curvature",), cuda_graphs=False))):
        got, seconds, peak = _timed(lambda: gpu.attribute(prompt, target, config=config), device)
        name = config.components[0]
        rows.append(compare(f"engine {label}", getattr(got, name), getattr(want, name), ENGINE_TOLERANCE, seconds,
                            peak))
    rows += shared_pass_rows(cpu, gpu, prompt, target, device)
    if switch.flash_attn_installed():
        half = Attributor.from_pretrained("smollm2-135m", device=str(device), dtype="bfloat16")
        config = HETAConfig(components=("information",))
        got, seconds, peak = _timed(lambda: half.attribute(prompt, target, config=config), device)
        rows.append(compare("engine masked passes, FlashAttention-2 (bf16 model)", got.information, want.information,
                            TOLERANCE[torch.bfloat16], seconds, peak))
    else:
        rows.append(Row("engine masked passes, FlashAttention-2", None, None, None, 0.0, None, "flash-attn missing"))
    return rows


def shared_pass_rows(cpu, gpu, prompt: str, target: str, device: torch.device, size: int = 8) -> list[Row]:
    """A scheduler group of ``size`` requests (the prompt without its first k words) through shared
    passes on the GPU against each one on the CPU (the curvature's group passes replayed from CUDA
    graphs, then eager); then the same group one request after another, timed, so that the table
    shows what sharing passes and the group graphs buy on this GPU."""
    from heta_fast.request import tokenize_request

    words = prompt.split(" ")
    size = max(1, min(size, len(words) - 1))  # every prompt keeps a word
    prompts = [" ".join(words[k:]) for k in range(size)]
    requests = [tokenize_request(gpu.tokenizer, p, target, gpu.adapter.max_length, gpu.adapter.vocab_size)
                for p in prompts]
    want = [cpu.attribute(p, target) for p in prompts]
    eager = gpu.config.replace(cuda_graphs=False)
    graphed = gpu.config.replace(cuda_graphs=True)
    gpu.attribute_group(requests, graphed, batched=True)  # warm-up (the group graphs' capture)
    rows = []
    for label, config, batched in (("shared passes, CUDA graphs", graphed, True), ("shared passes, eager", eager, True),
                                   ("one after another", graphed, False)):
        got, seconds, peak = _timed(lambda: gpu.attribute_group(requests, config, batched=batched), device)
        errors = [worst_relative_error(g.scores, w.scores) for g, w in zip(got, want)]
        worst = max(range(size), key=lambda i: errors[i])
        rows.append(compare(f"engine group of {size}, {label}", got[worst].scores, want[worst].scores,
                            ENGINE_TOLERANCE, seconds, peak))
    return rows


def timing_rows(device: torch.device, lengths: list[int]) -> list[Row]:
    """The default attribution at each context length in float32 and bfloat16: seconds and peak memory."""
    from heta_fast import Attributor

    filler = ("Photosynthesis primarily occurs in the leaves of the plant, where chloroplasts capture light. "
              "The roots take up water and minerals from the soil, and the stem carries them upwards. ")
    rows = []
    for dtype in ("float32", "bfloat16"):
        attr = Attributor.from_pretrained("smollm2-135m", device=str(device), dtype=dtype)
        ids: list[int] = []
        while len(ids) < max(lengths):
            ids += attr.tokenizer(filler, add_special_tokens=False)["input_ids"]
        for n in lengths:
            prompt = ids[:n]
            attr.attribute(prompt, [ids[n]])  # warm-up (kernel autotuning, graph capture)
            res, seconds, peak = _timed(lambda: attr.attribute(prompt, [ids[n]]), device)
            ok = bool(torch.isfinite(res.scores).all())
            rows.append(Row(f"end to end n={n} {dtype}", ok, None, None, seconds, peak,
                            "" if ok else "non-finite scores"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="kernel checks only")
    p.add_argument("--lengths", default="128,512,2048", help="context lengths of the end-to-end timing")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing was checked", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    rows = kernel_rows(device)
    if not args.quick:
        rows += engine_rows(device)
        rows += timing_rows(device, [int(x) for x in args.lengths.split(",") if x.strip()])
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}\n" + render_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
