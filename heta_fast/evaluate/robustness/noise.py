"""Embedding noise: Gaussian noise ε_i ~ N(0, (scale · rms_i)² I) is added to every input-embedding
row x_i (rms_i = ‖x_i‖₂ / √d, so ‖ε_i‖ / ‖x_i‖ ≈ scale) and the input is attributed again. The
noise enters through a forward hook on the model's input-embedding module
(:func:`perturbed_embeddings`): the engine and every baseline embed their input by calling that
module (``ModelAdapter.embed``), so each method sees exactly the same perturbed input without any
of them being changed; the hook adds the noise only to outputs whose last two dimensions are the
input's ``[n, d]`` (a mask vector embedded from one pad/unk id is left alone) and is removed on
leaving the block. The change is reported as 1 − Spearman between the clean and noisy rows and as
the total-variation distance between their normalised magnitudes (½ Σ_i |p_i − q_i|,
p = |s| / Σ|s|; 0 = the same mass distribution, 1 = disjoint).
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ...errors import InputError
from ...model.exclusive import lock_of
from ..data import EvalExample
from ..methods import run_methods
from ..runner import example_target
from .ranks import attribution_change

NOISE_SCALES = (0.01, 0.1, 0.5)


def embedding_noise(embeds: torch.Tensor, scale: float, seed: int, key: str = "") -> torch.Tensor:
    """embeds [n, d] -> noise [n, d], row i ~ N(0, (scale · ‖x_i‖/√d)² I).

    One standard-normal draw per (seed, key) (CPU generator, float64), scaled: every scale of one
    record perturbs in the same direction, and every method sees the same noise.
    """
    if scale < 0:
        raise InputError(f"noise scale must be >= 0, got {scale}")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8")))
    z = torch.randn(embeds.shape, generator=g, dtype=torch.float64)
    rms = embeds.detach().double().cpu().pow(2).mean(-1, keepdim=True).sqrt()  # [n, 1]
    return (scale * rms * z).to(device=embeds.device, dtype=embeds.dtype)


@contextmanager
def perturbed_embeddings(model, noise: torch.Tensor) -> Iterator[None]:
    """Inside the block, the input-embedding module of ``model`` returns embedding + noise [n, d]
    for every lookup of n tokens (outputs [..., n, d]); the hook is removed on leaving. The block
    holds the model's lock (heta_fast/model/exclusive.py), so that no other thread's pass runs
    with the noise."""

    def add_noise(module, args, output):
        if output.shape[-2:] == noise.shape:
            return output + noise.to(device=output.device, dtype=output.dtype)
        return output

    with lock_of(model):
        handle = model.get_input_embeddings().register_forward_hook(add_noise)
        try:
            yield
        finally:
            handle.remove()


def noise_sensitivity(attributor, ex: EvalExample, methods: Sequence[str], scales: Sequence[float] = NOISE_SCALES,
                      seed: int = 0, ig_steps: int = 32) -> dict[str, dict]:
    """Per method and scale: :func:`attribution_change` of the first target row, clean against noisy."""
    target = example_target(attributor, ex)
    clean = run_methods(attributor, ex.prompt, target, methods, ig_steps=ig_steps)
    ids = torch.tensor(clean[methods[0]].context_ids + target[:-1].tolist())
    embeds = attributor.adapter.embed(ids)  # [n, d]: the model input of every method
    out = {m: {"seconds": float(clean[m].timings.get("total", 0.0))} for m in methods}
    for scale in scales:
        with perturbed_embeddings(attributor.model, embedding_noise(embeds, scale, seed, ex.id)):
            noisy = run_methods(attributor, ex.prompt, target, methods, ig_steps=ig_steps)
        for m in methods:
            out[m][str(scale)] = attribution_change(clean[m].scores[0], noisy[m].scores[0])
    return out
