"""bfloat16 against float32 on this machine: a matrix product of the default model's shape, and the
information term's masked passes on a bfloat16 copy of the default model, side by side (issue 16 §1).

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_bf16.py -q -s -p no:cacheprovider

Prints whether the CPU reports native bf16 (amx_bf16 / avx512_bf16 in /proc/cpuinfo), the time of
each dtype, their ratio, and for the information term the Spearman correlation and the median
relative error on the largest tenth of I between the two (P_orig from the float32 pass in both,
so only the masked passes differ). No timing assertions.
"""
from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.conftest import best_time, prompt_ids
from heta_fast.precision import cpu_bf16_features

N_CONTEXT = 128
REPEATS = 2


def test_bf16_against_float32(default_attributor, benchmark):
    from scipy.stats import spearmanr

    from heta_fast.model.adapter import ModelAdapter
    from heta_fast.model.capture import CaptureRequest
    from heta_fast.signals.information import PrefixCache, information, mask_vectors

    torch.set_num_threads(1)
    att = default_attributor
    print(f"\nthreads {torch.get_num_threads()}, CPU bf16 features: {cpu_bf16_features() or 'none'}")
    x, w = torch.randn(1024, 576), torch.randn(1536, 576)  # 1024 token rows through an MLP projection
    times = {dt: best_time(lambda dt=dt: [x.to(dt) @ w.to(dt).t() for _ in range(10)], REPEATS)
             for dt in (torch.float32, torch.bfloat16)}
    print(f"matmul 1024x576 @ 576x1536 (x10): float32 {times[torch.float32]:.3f} s, bfloat16 "
          f"{times[torch.bfloat16]:.3f} s, bf16 / fp32 time {times[torch.bfloat16] / times[torch.float32]:.2f}")

    ids = torch.tensor(prompt_ids(att.tokenizer, N_CONTEXT + 1))
    ad, cfg, n = att.adapter, att.config, N_CONTEXT
    embeds = ad.embed(ids[:-1])
    pos = torch.tensor([n - 1])
    cap = ad.capture(embeds, pos, CaptureRequest(key_values=True))
    masks = mask_vectors(cfg.mask_scheme, embeds[:n], ad.model.get_input_embeddings(), att.tokenizer)
    shadow = ModelAdapter(copy.deepcopy(att.model).to(torch.bfloat16))
    kv16 = [(k.bfloat16(), v.bfloat16()) for k, v in cap.kv]
    out = {}

    def run32():
        out["fp32"] = information(ad, embeds, pos, n, masks, cap.log_probs, cfg,
                                  prefix=PrefixCache.from_kv(cap.kv, n - 1))

    def run16():
        out["bf16"] = information(shadow, embeds.bfloat16(), pos, n, masks.bfloat16(), cap.log_probs, cfg,
                                  prefix=PrefixCache.from_kv(kv16, n - 1))

    t32, t16 = best_time(run32, REPEATS), best_time(run16, REPEATS)
    benchmark.pedantic(lambda: None, rounds=1)
    a, b = out["fp32"][0].double(), out["bf16"][0].double()
    top = a >= a.quantile(0.9)
    print(f"information term, n = {n}: float32 {t32:.2f} s, bfloat16 copy {t16:.2f} s, bf16 / fp32 time "
          f"{t16 / t32:.2f}; Spearman(I_bf16, I_fp32) {spearmanr(a, b).correlation:.4f}, median relative error "
          f"on the largest tenth {((b - a).abs() / a.abs())[top].median():.3e}")
    assert torch.isfinite(b).all()


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s"]))
