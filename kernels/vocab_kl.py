"""Triton kernel, launcher and wrapper for the fused vocabulary KL (see ``heta_fast.ops.vocab_kl``).

Computes, for every row b,

    KL_b = sum_v p_v (log p_v - z_v) + lse(z_b) * sum_v p_v,   z_b = h_b W^T (+ bias),

with ``p = exp(ref_logp[target_index[b]])``, without ever writing ``[B, V]``.  The logits
may be transformed first, in fp32: ``z <- z * logit_scale`` (Granite, Cohere), then
``z <- c * tanh(z / c)`` with ``softcap`` c (Gemma-2/3 final-logit soft-capping).

Layout of the work:

* grid = (cdiv(B, BLOCK_B), n_splits).  Program (i, j) owns rows
  ``[i*BLOCK_B, (i+1)*BLOCK_B)`` and the vocabulary slice
  ``[j*v_per_split, (j+1)*v_per_split)``.  Blocking rows lets one W tile serve
  BLOCK_B rows (W is the big operand); splitting the vocabulary gives the GPU
  enough programs when B is small.
* Inside a program we loop over the slice in tiles of BLOCK_V; each tile's
  logits ``[BLOCK_B, BLOCK_V]`` come from ``tl.dot`` over d in tiles of BLOCK_D,
  accumulated in fp32 whatever the input dtype.
* Per row the program keeps an online logsumexp (max ``m``, rescaled
  ``s = sum exp(z - m)``), ``cross = sum p (log p - z)`` and ``psum = sum p`` and
  writes them as ``[B, n_splits]`` partials; a tiny torch epilogue merges them.

Only ``tl.exp`` / ``tl.log`` / ``tl.maximum``-style primitives are used (no
libdevice; the soft-cap's tanh is built from ``tl.exp`` in ``utils.tanh_softcap``), so the
kernel also runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (
    ACCUMULATOR,
    check_positive,
    expect_shape,
    launch,
    require_device,
    tanh_softcap,
    widen_dot_operands,
)

__all__ = ["vocab_kl_triton"]

# Fixed tile sizes used under the interpreter (and whenever the caller pins
# blocks): small enough to exercise the tails of odd V and d, large enough that
# the interpreter does not spend all its time in Python loop overhead.
_INTERPRET_BLOCK_B = 16
_INTERPRET_BLOCK_V = 256
_INTERPRET_BLOCK_D = 32

# Every autotune config's BLOCK_V divides this, so vocabulary splits stay
# tile-aligned whichever config wins.
_SPLIT_ALIGN = 256


# ---------------------------------------------------------------------------
# device code
# ---------------------------------------------------------------------------


@triton.jit
def _tile_logits(
    hidden_ptr,
    weight_ptr,
    rows,
    row_ok,
    cols,
    col_ok,
    D,
    stride_hb,
    stride_hd,
    stride_wv,
    stride_wd,
    UPCAST: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Logits tile z[BLOCK_B, BLOCK_V] = h[rows] @ W[cols]^T in fp32 (no bias)."""
    z = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = ks < D
        # Masked lanes load 0, so tails in d add nothing to the dot product.
        h = tl.load(
            hidden_ptr + rows[:, None] * stride_hb + ks[None, :] * stride_hd,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # [BLOCK_B, BLOCK_D]
        w_t = tl.load(
            weight_ptr + cols[None, :] * stride_wv + ks[:, None] * stride_wd,
            mask=col_ok[None, :] & k_ok[:, None],
            other=0.0,
        )  # [BLOCK_D, BLOCK_V] = W[cols, ks]^T
        if UPCAST:
            # fp32 / mixed / fp64 inputs: multiply in fp32.
            h = h.to(tl.float32)
            w_t = w_t.to(tl.float32)
        # "ieee" keeps fp32 products exact-ish (no TF32); fp16/bf16 operands use
        # the tensor cores with an fp32 accumulator either way.
        z = tl.dot(h, w_t, acc=z, input_precision="ieee")
    return z


@triton.jit
def _vocab_kl_partials_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    ref_ptr,
    target_ptr,
    m_ptr,
    s_ptr,
    cross_ptr,
    psum_ptr,
    logit_scale,
    cap,
    B,
    V,
    D,
    n_splits,
    v_per_split,
    stride_hb,
    stride_hd,
    stride_wv,
    stride_wd,
    stride_rt,
    stride_rv,
    stride_bias,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial statistics of one (row block, vocabulary slice) pair.

    Writes m, s, cross, psum for rows of this block at ``[row, split]`` of the
    four ``[B, n_splits]`` fp32 outputs.
    """
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    # 64-bit offsets: T*V and V*d overflow int32 for large vocabularies.
    rows = rows.to(tl.int64)
    targets = tl.load(target_ptr + rows, mask=row_ok, other=0).to(tl.int64)

    v_lo = pid_s * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)  # every slice is non-empty

    m = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_B], dtype=tl.float32)
    cross = tl.zeros([BLOCK_B], dtype=tl.float32)
    psum = tl.zeros([BLOCK_B], dtype=tl.float32)

    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_hi
        cols = cols.to(tl.int64)

        z = _tile_logits(
            hidden_ptr, weight_ptr, rows, row_ok, cols, col_ok, D,
            stride_hb, stride_hd, stride_wv, stride_wd,
            UPCAST, BLOCK_B, BLOCK_V, BLOCK_D,
        )
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols * stride_bias, mask=col_ok, other=0.0).to(tl.float32)
            z = z + bias[None, :]
        if HAS_SCALE:
            z = z * logit_scale
        if HAS_SOFTCAP:
            z = tanh_softcap(z, cap)  # bounded, finite in padded lanes (tanh(0) = 0)

        # Online logsumexp; columns past the slice end must not enter it.  Each
        # tile has >= 1 valid column, so m_new is finite; on the first tile
        # m = -inf and exp(m - m_new) = 0 multiplies s = 0.
        z_lse = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z_lse, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z_lse - m_new[:, None]), axis=1)
        m = m_new

        # Reference log-probs; padding loads -inf, i.e. p = 0.
        log_p = tl.load(
            ref_ptr + targets[:, None] * stride_rt + cols[None, :] * stride_rv,
            mask=row_ok[:, None] & col_ok[None, :],
            other=float("-inf"),
        ).to(tl.float32)
        p = tl.exp(log_p)
        # p = 0 entries (log p = -inf, also all padding) would give 0 * -inf = NaN.
        # Replacing log p by 0 there (z is finite: padding has z = 0 + 0) makes
        # the product an exact 0 without producing a NaN even in dead lanes.
        log_p = tl.where(p > 0.0, log_p, 0.0)
        cross += tl.sum(p * (log_p - z), axis=1)
        psum += tl.sum(p, axis=1)

    out = rows * n_splits + pid_s
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(cross_ptr + out, cross, mask=row_ok)
    tl.store(psum_ptr + out, psum, mask=row_ok)


# ---------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------


def _check_block(name: str, value: int) -> None:
    """Tile sizes feed tl.arange (power of two) and tl.dot (>= 16 on GPUs)."""
    if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16, got {value}")


# Every BLOCK_V divides ``_SPLIT_ALIGN``.  The kernel only overwrites its outputs, so the
# repeated benchmark launches of autotuning are harmless.
_CONFIGS = [
    triton.Config({"BLOCK_B": bb, "BLOCK_V": bv, "BLOCK_D": bd}, num_warps=nw, num_stages=ns)
    for bb, bv, bd, nw, ns in [
        (16, 128, 64, 4, 3),
        (16, 256, 64, 8, 3),
        (32, 128, 64, 4, 3),
        (32, 256, 32, 8, 3),
        (64, 128, 32, 4, 2),
        (64, 128, 64, 8, 3),
        (64, 256, 32, 8, 2),
    ]
]
_KEY = ["V", "D", "HAS_SCALE", "HAS_SOFTCAP"]


def _check_inputs(hidden, weight, ref_logp, target_index, bias, logit_scale, cap) -> tuple[int, int, int]:
    """The shapes, row indices and transform values the launch relies on; returns ``(B, V, d)``.

    Out-of-range targets would be out-of-bounds reads, so their range is checked (one sync).
    """
    check_positive("logit_scale", logit_scale, optional=False)
    check_positive("softcap", cap)
    expect_shape("hidden", hidden, None, None)
    batch, dim = hidden.shape
    expect_shape("weight", weight, None, dim)
    vocab = weight.shape[0]
    if vocab < 1:
        raise ValueError("weight must have at least one vocabulary row (V >= 1)")
    expect_shape("ref_logp", ref_logp, None, vocab)
    expect_shape("target_index", target_index, batch)
    if bias is not None:
        expect_shape("bias", bias, vocab)
    if batch > 0:
        lo, hi = int(target_index.min()), int(target_index.max())
        if lo < 0 or hi >= ref_logp.shape[0]:
            raise ValueError(f"target_index values must lie in [0, {ref_logp.shape[0]}), got [{lo}, {hi}]")
    return batch, vocab, dim


def _gpu_vocab_split(batch: int, vocab: int, device: torch.device) -> int:
    """Vocabulary columns per program so that small batches still fill the GPU."""
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(batch, 32)
    wanted_splits = max(1, triton.cdiv(2 * sm_count, row_blocks))
    # Keep at least ~2k columns per program so the partials stay negligible.
    max_splits = max(1, vocab // 2048)
    n_splits = min(wanted_splits, max_splits)
    return triton.cdiv(triton.cdiv(vocab, n_splits), _SPLIT_ALIGN) * _SPLIT_ALIGN


def _combine_partials(
    m: torch.Tensor, s: torch.Tensor, cross: torch.Tensor, psum: torch.Tensor
) -> torch.Tensor:
    """Merge [B, n_splits] partial statistics into the [B] KL."""
    m_all = m.amax(dim=1)  # finite: every split saw >= 1 column
    s_all = (s * torch.exp(m - m_all[:, None])).sum(dim=1)
    lse = m_all + torch.log(s_all)
    return cross.sum(dim=1) + lse * psum.sum(dim=1)


def vocab_kl_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block_b: int | None = None,
    block_v: int | None = None,
    block_d: int | None = None,
    v_per_split: int | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Fused vocabulary KL with the Triton kernel.

    Args:
        hidden:       [B, d] fp32 / fp16 / bf16.
        weight:       [V, d] same dtype family as ``hidden`` (mixed dtypes are
                      multiplied in fp32).
        ref_logp:     [T, V] reference log-probabilities (any float dtype).
        target_index: [B] int32/int64 row indices into ``ref_logp``.
        bias:         optional [V].
        block_b, block_v, block_d: pin the tile sizes (powers of two >= 16).  By default
            the kernel is autotuned on a GPU and uses fixed small tiles under the
            interpreter.
        v_per_split:  vocabulary columns per program (default: all of V under
            the interpreter, chosen from the SM count on a GPU).
        logit_scale:  finite > 0; logits are multiplied by it after the bias (skipped at 1.0).
        softcap:      None or finite c > 0; logits become c * tanh(z / c) after the scale.

    Returns:
        [B] float32 KL per row.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set
    before triton was imported.
    """
    batch, vocab, dim = _check_inputs(hidden, weight, ref_logp, target_index, bias, logit_scale, softcap)
    interpret = require_device("vocab_kl_triton", hidden, _vocab_kl_partials_kernel)
    device = hidden.device
    if batch == 0:
        return torch.empty(0, dtype=ACCUMULATOR, device=device)

    tiles = {"BLOCK_B": block_b, "BLOCK_V": block_v, "BLOCK_D": block_d}
    for name, size in tiles.items():
        if size is not None:
            _check_block(name.lower(), size)
    if v_per_split is None:
        v_per_split = vocab if interpret else _gpu_vocab_split(batch, vocab, device)
    if v_per_split < 1:
        raise ValueError(f"v_per_split must be >= 1, got {v_per_split}")
    n_splits = triton.cdiv(vocab, v_per_split)

    # Native low-precision dot only when both operands share an fp16 (or, on a GPU, bf16) dtype.
    upcast = widen_dot_operands(hidden.dtype, weight.dtype, interpret)
    targets = target_index.to(torch.int64).contiguous()  # [B], tiny
    partials = torch.empty((4, batch, n_splits), dtype=ACCUMULATOR, device=device)
    m, s, cross, psum = partials.unbind(0)  # each [B, n_splits], contiguous

    args = (
        hidden, weight, bias if bias is not None else hidden, ref_logp, targets,
        m, s, cross, psum,
        float(logit_scale), 1.0 if softcap is None else float(softcap),
        batch, vocab, dim, n_splits, v_per_split,
        hidden.stride(0), hidden.stride(1),
        weight.stride(0), weight.stride(1),
        ref_logp.stride(0), ref_logp.stride(1),
        bias.stride(0) if bias is not None else 0,
    )
    launch(
        _vocab_kl_partials_kernel,
        lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]), n_splits),
        args,
        tiles=tiles,
        fixed={"BLOCK_B": _INTERPRET_BLOCK_B, "BLOCK_V": _INTERPRET_BLOCK_V, "BLOCK_D": _INTERPRET_BLOCK_D},
        interpret=interpret,
        configs=_CONFIGS,
        key=_KEY,
        HAS_BIAS=bias is not None,
        HAS_SCALE=logit_scale != 1.0,
        HAS_SOFTCAP=softcap is not None,
        UPCAST=upcast,
    )
    return _combine_partials(m, s, cross, psum)
