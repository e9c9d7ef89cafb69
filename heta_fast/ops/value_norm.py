"""Per-head value norms for the semantic flow gate.

    vn[h, i] = || v[kv(h), i] @ w_o[h] ||_1,      kv(h) = h // (H // Hkv)

i.e. the L1 norm of what key i writes into the residual stream through head h (value
incl. bias, projected by that head's slice of the output projection).

* ``value_norm_reference`` materialises [H, n, d_model]; the test oracle.
* ``value_norm_blocked`` tiles over positions; at most one [H, block, d_model] tile.
* ``value_norm`` dispatches to the Triton kernel (``heta_fast.kernels.value_norm``) for
  CUDA tensors and to the blocked path otherwise.

Importing this module imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import importlib.util

import torch

__all__ = ["value_norm_reference", "value_norm_blocked", "value_norm", "check_value_norm_inputs"]

# Rows per tile; the [H, block, d_model] tile (9 x 128 x 576 fp32 = 2.6 MB for the
# default model) stays cache-friendly.
DEFAULT_BLOCK = 128


def _compute_dtype(v: torch.Tensor, w_o: torch.Tensor) -> torch.dtype:
    """float64 if either input is float64, else float32 (half inputs accumulate in fp32)."""
    if torch.float64 in (v.dtype, w_o.dtype):
        return torch.float64
    return torch.float32


def check_value_norm_inputs(v: torch.Tensor, w_o: torch.Tensor) -> int:
    """Validate shapes; returns rep = H // Hkv.

    v: [Hkv, n, dh]; w_o: [H, dh, d_model] with H a multiple of Hkv.
    """
    if v.dim() != 3 or w_o.dim() != 3:
        raise ValueError("v must be [Hkv, n, dh] and w_o [H, dh, d_model]")
    n_kv, _, dh = v.shape
    n_heads = w_o.shape[0]
    if w_o.shape[1] != dh:
        raise ValueError(f"w_o head dim {w_o.shape[1]} != v head dim {dh}")
    if n_heads % n_kv != 0:
        raise ValueError(f"H={n_heads} is not a multiple of Hkv={n_kv}")
    return n_heads // n_kv


def value_norm_reference(v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Oracle: expands kv heads and materialises every head output.

    Args: v [Hkv, n, dh], w_o [H, dh, d_model]. Returns vn [H, n] (float64 if an input
    is float64, else float32).
    """
    rep = check_value_norm_inputs(v, w_o)
    dt = _compute_dtype(v, w_o)
    v_h = v.to(dt).repeat_interleave(rep, dim=0)  # [H, n, dh]
    return torch.matmul(v_h, w_o.to(dt)).abs().sum(dim=-1)


def value_norm_blocked(
    v: torch.Tensor, w_o: torch.Tensor, block: int = DEFAULT_BLOCK
) -> torch.Tensor:
    """Value norms tiled over positions; memory one [H, block, d_model] tile.

    Args: v [Hkv, n, dh], w_o [H, dh, d_model], block rows per tile.
    Returns: vn [H, n] in float32 (float64 if an input is float64).
    """
    rep = check_value_norm_inputs(v, w_o)
    dt = _compute_dtype(v, w_o)
    n_kv, n, dh = v.shape
    n_heads, _, d_model = w_o.shape
    # Group heads by kv head: [Hkv, rep, dh, D] @ [Hkv, 1, B, dh] broadcasts each value
    # tile over its query group without copying v.
    w4 = w_o.to(dt).reshape(n_kv, rep, dh, d_model)
    v_c = v.to(dt)
    out = torch.empty(n_heads, n, dtype=dt, device=v.device)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        tile = torch.matmul(v_c[:, None, i0:i1], w4)  # [Hkv, rep, B, D]
        out[:, i0:i1] = tile.abs_().sum(dim=-1).reshape(n_heads, i1 - i0)
    return out


def value_norm(v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """vn [H, n]: Triton on CUDA tensors (if triton is installed), blocked torch otherwise."""
    if v.is_cuda and importlib.util.find_spec("triton") is not None:
        from heta_fast.kernels.value_norm import value_norm_triton  # lazy: triton optional

        return value_norm_triton(v, w_o)
    return value_norm_blocked(v, w_o)
