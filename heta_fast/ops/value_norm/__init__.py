"""Per-head value norms for the semantic flow gate.

    vn[h, i] = || v[kv(h), i] @ w_o[h] ||_1,      kv(h) = h // (H // Hkv)

i.e. the L1 norm of what key i writes into the residual stream through head h (value
incl. bias, projected by that head's slice of the output projection).

* ``naive.value_norm_reference`` materialises [H, n, d_model]; the test oracle.
* ``blocked.value_norm_blocked`` tiles over positions; at most one [H, block, d_model] tile.
* ``value_norm`` (here) dispatches to the Triton kernel (``heta_fast.kernels.value_norm``)
  for CUDA tensors (not float64: the kernel accumulates in float32) and to the blocked path otherwise.

Importing this package imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import torch

from ..utils import use_triton
from .blocked import DEFAULT_BLOCK, value_norm_blocked
from .common import check_value_norm_inputs
from .naive import value_norm_reference

__all__ = ["DEFAULT_BLOCK", "check_value_norm_inputs", "value_norm", "value_norm_blocked", "value_norm_reference"]


def value_norm(v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """vn [H, n]: Triton on CUDA tensors (if triton is installed and neither is float64), blocked torch otherwise."""
    if use_triton(v, w_o):
        from heta_fast.kernels.value_norm import value_norm_triton  # lazy: triton optional

        check_value_norm_inputs(v, w_o)
        return value_norm_triton(v, w_o)
    return value_norm_blocked(v, w_o)
