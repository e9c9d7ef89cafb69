"""Shared helpers of the op tests: comparisons, the dtype tolerance table, Triton set-up.

Every fast path is compared with its op's naive reference evaluated in float64 on the *same*
(already rounded) inputs, so the tolerances only absorb the fast path's own arithmetic.
"""

from __future__ import annotations

import importlib

import pytest
import torch

# Relative tolerance of a fast path against the float64 oracle, by input dtype; the absolute
# tolerance is the same fraction of the largest |expected| (see assert_rel_close).  fp16 and
# bf16 inputs are exact in fp32 and so are their products (the oracle sees the same rounded
# inputs, so the rounding of the inputs themselves costs nothing); only the fp32 sums err
# (measured ~2e-7 under the interpreter), but on a GPU the products go through tensor cores,
# so keep slack.  A half-precision accumulator (unit roundoff 4e-3 in bf16) is far outside.
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def kernel_rtol(dtype: torch.dtype) -> float:
    """RTOL of a Triton kernel for ``dtype`` inputs: the kernels compute in float32, so float64
    inputs are held to the float32 row (the exact float64 paths are the blocked ones)."""
    return RTOL[torch.float32 if dtype == torch.float64 else dtype]


# The vocabulary KL is a difference of terms of size ~|z| (lse vs sum p z), so its absolute
# error floor grows with the logits: (rtol, atol per unit of max |logit|) by input dtype.
KL_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1e-3, 1e-5),
}

# Independent oracles (explicit loops, torch's kl_div) against the references, all float64.
EXACT = 1e-12

GQA = [(9, 3), (4, 1), (4, 4)]  # (H, Hkv): default model 9:3, 4:1, MHA


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float) -> None:
    """Same shape and |out - ref| <= atol + rtol * |ref| everywhere, compared in float64 on the CPU."""
    ref = ref.detach().cpu().double()
    out = out.detach().cpu().double()
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_rel_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float) -> None:
    """assert_close with atol = rtol * max |ref|: the error is judged against the largest entry."""
    assert_close(name, ref, out, atol=rtol * max(float(ref.abs().max()), 1e-300), rtol=rtol)


def kernel_device() -> str:
    """The device Triton kernel inputs must live on (skips the test without triton).

    CPU under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU), else CUDA.
    """
    pytest.importorskip("triton")
    from heta_fast.kernels.utils import interpreting

    if interpreting():
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("triton was imported without TRITON_INTERPRET=1 and there is no GPU")
    return "cuda"


def triton_kernel(op: str, name: str):
    """``heta_fast.kernels.<op>.<name>`` and the device its inputs must live on."""
    device = kernel_device()
    return getattr(importlib.import_module(f"heta_fast.kernels.{op}"), name), device


def force_triton(monkeypatch, op: str, kernel: str) -> tuple[str, list]:
    """Make the dispatcher ``heta_fast.ops.<op>`` take its Triton branch.

    The dispatchers' device test (``heta_fast.ops.utils.triton_device``) is patched to always say
    yes, so under the interpreter CPU tensors run the kernel (on a GPU, give it CUDA tensors); the
    dtype rule of ``use_triton`` (float64 never goes to a kernel) still applies.  Returns the kernel device and the
    recorded calls of ``heta_fast.kernels.<op>.<kernel>``.
    """
    device = kernel_device()
    monkeypatch.setattr(importlib.import_module("heta_fast.ops.utils"), "triton_device", lambda t: True)
    return device, spy(monkeypatch, importlib.import_module(f"heta_fast.kernels.{op}"), kernel)


def spy(monkeypatch, module, name: str) -> list:
    """Record the calls of ``module.<name>`` (still running it); returns the list of calls."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls
