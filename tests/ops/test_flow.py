"""Tests for the streaming flow step (heta_fast.ops.flow, heta_fast.kernels.flow).

Every fast path is compared with ``flow_step_reference`` evaluated in float64 on the
*same* (already rounded) inputs, so tolerances only absorb the fast path's own fp32
arithmetic.  The reference itself is checked against explicit Python loops, and a
3-layer chain is checked against a rollout written independently in this file.  The
Triton kernel runs under ``TRITON_INTERPRET=1`` on CPU (set in tests/conftest.py)
unless a GPU is present.
"""

from __future__ import annotations

import math

import pytest
import torch

import heta_fast.ops.flow as flow_ops
from heta_fast.ops.flow import flow_step
from heta_fast.ops.flow.blocked import flow_step_blocked
from heta_fast.ops.flow.naive import attention_probs_reference, flow_step_reference, lse_reference
from tests.ops.utils import (
    EXACT,
    GQA,
    RTOL,
    assert_close,
    assert_rel_close,
    force_triton,
    kernel_rtol,
    spy,
    triton_kernel,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------
# case construction
# ---------------------------------------------------------------------------


def make_rows(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Rollout rows r [T, n] (float64) of a given kind; every row sums to 1.

    onehot1: one target at the last position.
    onehot3: targets at n-1, n//2 and 0 (tiles between them carry no mass).
    general: 4 probability rows whose support ends at different positions.
    """
    if kind == "onehot1":
        r = torch.zeros(1, n, dtype=torch.float64)
        r[0, n - 1] = 1.0
        return r
    if kind == "onehot3":
        r = torch.zeros(3, n, dtype=torch.float64)
        for t, p in enumerate((n - 1, n // 2, 0)):
            r[t, p] = 1.0
        return r
    if kind == "general":
        r = torch.rand(4, n, generator=gen, dtype=torch.float64)
        for t, p in enumerate((n - 1, (2 * n) // 3, n // 4, 0)):
            r[t, p + 1 :] = 0.0  # a rollout row has no mass after its target
        return r / r.sum(dim=-1, keepdim=True)
    raise ValueError(kind)


def make_case(heads, n, dh, window, dtype, rows="general", seed=0, amp=2.0, softcap=None):
    """Inputs of one layer: (q, k, lse, scale, r, vn) with q/k in ``dtype``.

    ``amp`` > 1 sharpens the attention (scores ~ N(0, amp^2)) so exp() is stressed.
    lse is computed in float64 from the rounded q, k (as the model would provide it, over
    the scores soft-capped by ``softcap`` when given) and handed over in float32 (float64
    for float64 cases).
    """
    n_heads, n_kv = heads
    gen = torch.Generator().manual_seed(seed)
    q = (amp * torch.randn(n_heads, n, dh, generator=gen, dtype=torch.float64)).to(dtype)
    k = torch.randn(n_kv, n, dh, generator=gen, dtype=torch.float64).to(dtype)
    scale = dh**-0.5
    side = torch.float64 if dtype == torch.float64 else torch.float32
    lse = lse_reference(q.double(), k.double(), scale, window, softcap).to(side)
    vn = (torch.rand(n_heads, n, generator=gen, dtype=torch.float64) * 3.0).to(side)
    r = make_rows(rows, n, gen).to(side)
    return q, k, lse, scale, r, vn


def to_device(*ts, device=DEVICE):
    return tuple(t.to(device) for t in ts)


def oracle(q, k, lse, scale, r, vn, window, softcap=None):
    """flow_step_reference in float64 on the same (rounded) inputs."""
    return flow_step_reference(
        q.double().cpu(), k.double().cpu(), lse.double().cpu(), scale,
        r.double().cpu(), vn.double().cpu(), window, softcap,
    )


# ---------------------------------------------------------------------------
# the references themselves
# ---------------------------------------------------------------------------


def _loop_probs(q, k, scale, window, softcap=None):
    """A[h, j, i] by explicit loops over allowed keys (float64, tiny n only); scores
    c * tanh(s / c) with ``softcap`` c."""
    n_heads, n, _ = q.shape
    rep = n_heads // k.shape[0]
    probs = torch.zeros(n_heads, n, n, dtype=torch.float64)
    for h in range(n_heads):
        for j in range(n):
            keys = [i for i in range(n) if i <= j and (window is None or i > j - window)]
            s = torch.stack([scale * torch.dot(q[h, j], k[h // rep, i]) for i in keys])
            if softcap is not None:
                s = torch.tensor([softcap * math.tanh(float(x) / softcap) for x in s], dtype=torch.float64)
            probs[h, j, keys] = torch.softmax(s, dim=0)
    return probs


@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("heads", [(4, 2), (3, 3)])
def test_reference_probs_match_loops(heads, window, softcap):
    q, k, *_ = make_case(heads, 6, 8, window, torch.float64)
    expected = _loop_probs(q, k, 8**-0.5, window, softcap)
    probs = attention_probs_reference(q, k, 8**-0.5, window, softcap)
    assert probs.dtype == torch.float64
    assert_close("probs", expected, probs, EXACT, EXACT)
    lse = lse_reference(q, k, 8**-0.5, window, softcap)
    # Rebuilding A from lse must give the same probabilities where allowed.
    n = q.shape[1]
    scores = 8**-0.5 * q @ k.repeat_interleave(heads[0] // heads[1], 0).transpose(1, 2)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    rebuilt = torch.exp(scores - lse[..., None])
    assert_close("probs from lse", expected, rebuilt * (expected > 0), EXACT, EXACT)
    assert torch.allclose(probs.sum(-1), torch.ones(heads[0], n, dtype=torch.float64))


@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("window", [None, 3])
def test_reference_flow_matches_loops(window, softcap):
    heads, n = (4, 2), 7
    q, k, lse, scale, r, vn = make_case(heads, n, 8, window, torch.float64, rows="general", softcap=softcap)
    probs = _loop_probs(q, k, scale, window, softcap)
    n_targets = r.shape[0]
    flow = torch.zeros(n_targets, n, dtype=torch.float64)
    r_next = torch.zeros(n_targets, n, dtype=torch.float64)
    for t in range(n_targets):
        for i in range(n):
            for h in range(heads[0]):
                phi = sum(r[t, j] * probs[h, j, i] for j in range(n))
                flow[t, i] += phi * vn[h, i]
                r_next[t, i] += 0.5 * phi / heads[0]
            r_next[t, i] += 0.5 * r[t, i]
        r_next[t] /= r_next[t].sum()
    got_flow, got_r = flow_step_reference(q, k, lse, scale, r, vn, window, softcap)
    assert got_flow.dtype == got_r.dtype == torch.float64
    assert_close("flow", flow, got_flow, EXACT, EXACT)
    assert_close("r_next", r_next, got_r, EXACT, EXACT)


def test_comparisons_detect_wrong_window_and_gqa_mapping():
    """Sanity: the checks used below are sensitive to the classic mistakes."""
    q, k, lse, scale, r, vn = make_case((4, 2), 40, 16, 5, torch.float64)
    good, _ = flow_step_reference(q, k, lse, scale, r, vn, 5)
    no_window, _ = flow_step_blocked(q, k, lse, scale, r, vn, None)
    assert (good - no_window).abs().max() > 1e-3
    # h % Hkv instead of h // rep: swap the kv head of query heads 1 and 2.
    wrong_q = q[[0, 2, 1, 3]]
    wrong, _ = flow_step_blocked(wrong_q, k, lse[[0, 2, 1, 3]], scale, r, vn[[0, 2, 1, 3]], 5)
    assert (good - wrong).abs().max() > 1e-3


# ---------------------------------------------------------------------------
# blocked CPU path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", ["onehot1", "onehot3", "general"])
@pytest.mark.parametrize("window", [None, 5, 100])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("n", [1, 7, 129, 333])
def test_blocked_float64_tight(n, heads, window, rows):
    dh = 80 if n % 2 else 64
    case = make_case(heads, n, dh, window, torch.float64, rows=rows, seed=n)
    expected_flow, expected_r = oracle(*case, window)
    for block in (16, 64):
        flow, r_next = flow_step_blocked(*case, window=window, block=block)
        assert flow.dtype == torch.float64
        assert_rel_close(f"flow block={block}", expected_flow, flow, RTOL[torch.float64])
        assert_rel_close(f"r_next block={block}", expected_r, r_next, RTOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dh", [64, 80])
@pytest.mark.parametrize("window", [None, 33])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("n", [1, 7, 129, 333])
def test_blocked_low_precision(n, heads, window, dh, dtype):
    case = make_case(heads, n, dh, window, dtype, rows="general", seed=7 * n + dh)
    expected_flow, expected_r = oracle(*case, window)
    flow, r_next = flow_step_blocked(*case, window=window)
    assert flow.dtype == torch.float32
    assert_rel_close("flow", expected_flow, flow, RTOL[dtype])
    assert_rel_close("r_next", expected_r, r_next, RTOL[dtype])
    assert torch.allclose(r_next.sum(-1).double(), torch.ones(r_next.shape[0], dtype=torch.float64), atol=1e-5)


def test_blocked_zero_rows_and_skipped_tail():
    """All-zero r gives zero flow and leaves r unnormalised; keys after the last
    target get no flow."""
    q, k, lse, scale, r, vn = make_case((4, 1), 50, 16, None, torch.float64)
    flow, r_next = flow_step_blocked(q, k, lse, scale, torch.zeros_like(r), vn)
    assert torch.count_nonzero(flow) == 0 and torch.count_nonzero(r_next) == 0
    one = torch.zeros(1, 50, dtype=torch.float64)
    one[0, 20] = 1.0
    flow, r_next = flow_step_blocked(q, k, lse, scale, one, vn, block=16)
    assert torch.count_nonzero(flow[:, 21:]) == 0 and torch.count_nonzero(r_next[:, 21:]) == 0
    assert_rel_close("flow", oracle(q, k, lse, scale, one, vn, None)[0], flow, EXACT)


# Attention logit soft-capping (Gemma-2's attn_logit_softcapping is 50; the small caps bend
# most scores of these cases, scores ~ N(0, 2^2), so a wrong cap cannot pass).
SOFTCAPS = [1.5, 50.0]


@pytest.mark.parametrize("softcap", SOFTCAPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("n", [1, 37, 129])
def test_blocked_softcap_matches_reference(n, heads, window, dtype, softcap):
    case = make_case(heads, n, 80 if n % 2 else 64, window, dtype, seed=5 * n + 1, softcap=softcap)
    expected_flow, expected_r = oracle(*case, window, softcap)
    for block in (16, 64):
        flow, r_next = flow_step_blocked(*case, window=window, block=block, softcap=softcap)
        assert flow.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_rel_close(f"flow block={block}", expected_flow, flow, RTOL[dtype])
        assert_rel_close(f"r_next block={block}", expected_r, r_next, RTOL[dtype])


def test_softcap_is_applied_and_off_by_default():
    """The cap changes the result (and lse must be the capped one); None is the plain step."""
    heads, n, window = (4, 1), 50, None
    plain = make_case(heads, n, 64, window, torch.float64, seed=3)
    capped = make_case(heads, n, 64, window, torch.float64, seed=3, softcap=1.5)
    q, k, lse, scale, r, vn = plain
    good, _ = flow_step_blocked(*capped, softcap=1.5)
    # Forgetting the cap, or capping with the uncapped lse, is caught.
    assert (good - flow_step_blocked(*capped)[0]).abs().max() > 1e-2
    assert (good - flow_step_blocked(*plain, softcap=1.5)[0]).abs().max() > 1e-2
    # softcap=None is the uncapped computation on the fast paths (against the reference, itself
    # checked against explicit loops above, uncapped and capped).
    uncapped = oracle(*plain, window)[0]
    for fn in (flow_step_blocked, flow_step):
        assert_rel_close("flow", uncapped, fn(*plain, softcap=None)[0], 1e-9)
    # A cap far above every score is the identity up to rounding.
    far = flow_step_blocked(q, k, lse, scale, r, vn, softcap=1e6)[0]
    assert_rel_close("flow", oracle(*plain, window)[0], far, 1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "50"])
def test_bad_softcap_raises(bad):
    q, k, lse, scale, r, vn = make_case((4, 2), 9, 16, None, torch.float32)
    for call in (
        lambda: flow_step_blocked(q, k, lse, scale, r, vn, softcap=bad),
        lambda: flow_step_reference(q, k, lse, scale, r, vn, softcap=bad),
        lambda: flow_step(q, k, lse, scale, r, vn, softcap=bad),
        lambda: lse_reference(q, k, scale, softcap=bad),
        lambda: attention_probs_reference(q, k, scale, softcap=bad),
    ):
        with pytest.raises(ValueError, match="softcap"):
            call()


def test_dispatcher_cpu_tensors_take_blocked_path(monkeypatch):
    calls = spy(monkeypatch, flow_ops, "flow_step_blocked")
    case = make_case((9, 3), 77, 64, None, torch.float32)
    flow, r_next = flow_step(*case, window=5)
    assert len(calls) == 1 and calls[0][1] == {"window": 5, "softcap": None}
    assert flow.dtype == r_next.dtype == torch.float32
    case = make_case((9, 3), 77, 64, 5, torch.float32, softcap=2.0)
    flow, _ = flow_step(*case, window=5, softcap=2.0)
    assert len(calls) == 2 and calls[1][1] == {"window": 5, "softcap": 2.0}
    assert_rel_close("flow", oracle(*case, 5, 2.0)[0], flow, RTOL[torch.float32])


@pytest.mark.interpreter
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("window", [None, 5])
def test_dispatcher_triton_branch_matches_reference(monkeypatch, window, softcap):
    """The dispatcher's Triton branch (forced onto CPU tensors under the interpreter)."""
    device, kernel_calls = force_triton(monkeypatch, "flow", "flow_step_triton")
    q, k, lse, scale, r, vn = make_case((9, 3), 77, 64, window, torch.float32, softcap=softcap)
    expected_flow, expected_r = oracle(q, k, lse, scale, r, vn, window, softcap)
    q_, k_, lse_, r_, vn_ = to_device(q, k, lse, r, vn, device=device)
    flow, r_next = flow_step(q_, k_, lse_, scale, r_, vn_, window=window, softcap=softcap)
    assert len(kernel_calls) == 1 and kernel_calls[0][1] == {"window": window, "softcap": softcap}
    assert flow.dtype == torch.float32 and flow.device.type == device
    assert_rel_close("flow", expected_flow, flow, RTOL[torch.float32])
    assert_rel_close("r_next", expected_r, r_next, RTOL[torch.float32])
    with pytest.raises(ValueError):  # the op's own checks run before the kernel
        flow_step(q_, k_, lse_[:, :5], scale, r_, vn_)
    with pytest.raises(ValueError, match="softcap"):
        flow_step(q_, k_, lse_, scale, r_, vn_, softcap=0.0)
    assert len(kernel_calls) == 1


@pytest.mark.interpreter
def test_dispatcher_float64_stays_on_blocked_path(monkeypatch):
    """A float64 model's rollout never takes the float32 Triton kernel, even where it would run:
    its flow and next rows stay float64 (heta_fast/ops/utils.py ``use_triton``)."""
    _, kernel_calls = force_triton(monkeypatch, "flow", "flow_step_triton")
    blocked_calls = spy(monkeypatch, flow_ops, "flow_step_blocked")
    q, k, lse, scale, r, vn = make_case((4, 2), 33, 16, None, torch.float64)
    flow, r_next = flow_step(q, k, lse, scale, r, vn)
    assert (len(kernel_calls), len(blocked_calls)) == (0, 1)
    assert flow.dtype == r_next.dtype == torch.float64


def test_bad_shapes_raise():
    q, k, lse, scale, r, vn = make_case((4, 2), 9, 16, None, torch.float32)
    with pytest.raises(ValueError):
        flow_step_blocked(q, k[:1, :5], lse, scale, r, vn)
    with pytest.raises(ValueError):
        flow_step_blocked(q, k[:, :, :8], lse, scale, r, vn)
    with pytest.raises(ValueError):
        flow_step_blocked(q, k, lse[:, :5], scale, r, vn)
    with pytest.raises(ValueError):
        flow_step_blocked(q[:3], k, lse[:3], scale, r, vn[:3])  # 3 heads on 2 kv heads


# ---------------------------------------------------------------------------
# 3-layer chain vs an independently written full rollout
# ---------------------------------------------------------------------------


def _independent_rollout(layers, positions, n):
    """M_T [T, n] by materialising every attention matrix (float64, written from the
    definition; shares no code with heta_fast.ops.flow)."""
    r = torch.zeros(len(positions), n, dtype=torch.float64)
    r[torch.arange(len(positions)), torch.tensor(positions)] = 1.0
    gate = torch.zeros_like(r)
    idx = torch.arange(n)
    for q, k, scale, vn, window, softcap in reversed(layers):
        rep = q.shape[0] // k.shape[0]
        hidden = idx[None, :] > idx[:, None]
        if window is not None:
            hidden |= idx[None, :] <= idx[:, None] - window
        scores = scale * torch.einsum("hjd,hid->hji", q.double(), k.double()[torch.arange(q.shape[0]) // rep])
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
        phi = torch.einsum("tj,hji->thi", r, probs)
        gate += (phi * vn.double()[None]).sum(dim=1)
        r = 0.5 * torch.einsum("tj,ji->ti", r, probs.mean(dim=0)) + 0.5 * r
        r = r / r.sum(dim=-1, keepdim=True)
    return gate


def _random_layers(n, dtype, seed, softcap=None):
    """Three layers with different GQA layouts / windows (as in mixed-attention models),
    each soft-capped at ``softcap`` when given (as Gemma-2 caps every layer)."""
    specs = [((9, 3), 64, None), ((4, 1), 80, 17), ((4, 4), 64, None)]
    layers = []
    for index, (heads, dh, window) in enumerate(specs):
        q, k, _, scale, _, vn = make_case(heads, n, dh, window, dtype, seed=seed + index)
        layers.append((q, k, scale, vn, window, softcap))
    # H differs between layers on purpose: r [T, n] is the only state carried across.
    return layers


def _chain(step, layers, positions, n):
    """Run ``step`` down the layers like the engine does; returns M_T [T, n]."""
    side = torch.float64 if layers[0][0].dtype == torch.float64 else torch.float32
    r = torch.zeros(len(positions), n, dtype=side)
    r[torch.arange(len(positions)), torch.tensor(positions)] = 1.0
    gate = torch.zeros_like(r)
    for q, k, scale, vn, window, softcap in reversed(layers):
        lse = lse_reference(q.double(), k.double(), scale, window, softcap).to(side)
        q_, k_, lse_, r_, vn_ = to_device(q, k, lse, r, vn.to(side))
        flow, r = step(q_, k_, lse_, scale, r_, vn_, window=window, softcap=softcap)
        flow, r = flow.cpu().to(side), r.cpu().to(side)
        gate += flow
    return gate


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chain_blocked_matches_full_rollout(dtype, softcap):
    n, positions = 61, [60, 33]
    layers = _random_layers(n, dtype, seed=11, softcap=softcap)
    expected = _independent_rollout(layers, positions, n)
    rtol = RTOL[torch.float64] if dtype == torch.float64 else 1e-5
    got = _chain(flow_step_blocked, layers, positions, n)
    assert_rel_close("M_T", expected, got, rtol)
    got = _chain(flow_step, layers, positions, n)
    assert_rel_close("M_T dispatch", expected, got, rtol)


# ---------------------------------------------------------------------------
# Triton kernel (interpreter on CPU)
# ---------------------------------------------------------------------------


def _triton_flow():
    return triton_kernel("flow", "flow_step_triton")[0]


# (n, heads, dh, window, rows, dtype, pinned tiles).  H is reduced for the biggest n so
# each case stays well under ~10 s under the interpreter.
TRITON_CASES = [
    (1, (9, 3), 64, None, "onehot1", torch.float32, None),
    (1, (4, 1), 80, 4, "general", torch.float16, None),
    (7, (9, 3), 64, None, "onehot3", torch.float32, None),
    (7, (4, 4), 80, 3, "general", torch.float16, None),
    (129, (4, 1), 64, None, "general", torch.float32, 16),
    (129, (9, 3), 80, 40, "onehot3", torch.float16, None),
    # window - 2 divisible by the tile: the last query tile that sees a key tile starts
    # exactly at the loop bound, so an off-by-one there drops it.
    (129, (4, 4), 64, 18, "onehot1", torch.float32, 16),
    (333, (9, 3), 64, None, "onehot1", torch.float32, None),
    (333, (3, 1), 80, None, "general", torch.float32, None),
    (333, (2, 2), 64, 66, "general", torch.float16, None),
    (333, (4, 1), 80, 100, "onehot3", torch.float32, None),
    # bf16 (the interpreter holds it as uint16 bit patterns: the dot operands must be widened):
    # one key, a window with many 16-tiles and the tl.dot target path (T = 4), onehot3 with
    # window - 2 on the tile bound, and the longest case on few heads.
    (1, (4, 1), 80, None, "onehot1", torch.bfloat16, None),
    (37, (9, 3), 80, 5, "general", torch.bfloat16, 16),
    (129, (4, 4), 64, 18, "onehot3", torch.bfloat16, None),
    (333, (2, 1), 80, None, "general", torch.bfloat16, None),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("n,heads,dh,window,rows,dtype,tiles", TRITON_CASES)
def test_triton_matches_reference(n, heads, dh, window, rows, dtype, tiles):
    flow_step_triton = _triton_flow()
    case = make_case(heads, n, dh, window, dtype, rows=rows, seed=3 * n + dh)
    expected_flow, expected_r = oracle(*case, window)
    q, k, lse, scale, r, vn = case
    q, k, lse, r, vn = to_device(q, k, lse, r, vn)
    flow, r_next = flow_step_triton(q, k, lse, scale, r, vn, window, block_m=tiles, block_n=tiles)
    assert flow.dtype == torch.float32 and flow.shape == r.shape
    assert_rel_close("flow", expected_flow, flow, RTOL[dtype])
    assert_rel_close("r_next", expected_r, r_next, RTOL[dtype])


@pytest.mark.interpreter
def test_triton_checks_shapes():
    """The kernel's own (minimal) checks: shapes and GQA grouping."""
    flow_step_triton = _triton_flow()
    q, k, lse, scale, r, vn = make_case((4, 2), 9, 16, None, torch.float32)
    q, k, lse, r, vn = to_device(q, k, lse, r, vn)
    for bad in (
        (q, k[:, :5], lse, scale, r, vn),
        (q, k, lse[:, :5], scale, r, vn),
        (q[:3], k, lse[:3], scale, r, vn[:3]),  # 3 heads on 2 kv heads
        (q, k, lse, scale, r[:, :5], vn),
    ):
        with pytest.raises(ValueError):
            flow_step_triton(*bad)
    with pytest.raises(ValueError):
        flow_step_triton(q, k, lse, scale, r, vn, window=0)


@pytest.mark.interpreter
def test_triton_many_targets_span_target_tiles():
    """T = 70 > 64 targets: the third grid axis splits targets over programs."""
    flow_step_triton = _triton_flow()
    heads, n = (2, 1), 40
    q, k, lse, scale, _, vn = make_case(heads, n, 64, None, torch.float32)
    gen = torch.Generator().manual_seed(5)
    r = torch.rand(70, n, generator=gen)
    r[torch.arange(70), torch.arange(70) % n] += 1.0
    r = (r / r.sum(-1, keepdim=True)).float()
    expected_flow, expected_r = oracle(q, k, lse, scale, r, vn, None)
    flow, r_next = flow_step_triton(*to_device(q, k, lse), scale, *to_device(r, vn))
    assert_rel_close("flow", expected_flow, flow, RTOL[torch.float32])
    assert_rel_close("r_next", expected_r, r_next, RTOL[torch.float32])


@pytest.mark.interpreter
@pytest.mark.parametrize(("dtype", "softcap"), [(torch.float32, None), (torch.float32, 2.5), (torch.bfloat16, None)])
def test_triton_chain_matches_full_rollout(dtype, softcap):
    flow_step_triton = _triton_flow()
    n, positions = 61, [60, 33]
    layers = _random_layers(n, dtype, seed=11, softcap=softcap)
    expected = _independent_rollout(layers, positions, n)
    got = _chain(flow_step_triton, layers, positions, n)
    assert_rel_close("M_T", expected, got, 1e-5 if dtype == torch.float32 else kernel_rtol(dtype))


@pytest.mark.interpreter
@pytest.mark.parametrize(("q_dtype", "k_dtype"), [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)])
def test_triton_mixed_qk_dtypes(q_dtype, k_dtype):
    """q and k of different dtypes meet in their promoted dtype: neither is rounded to the
    other's (a bf16 q must not round an fp32 k to bf16; fp16 with bf16 runs in fp32)."""
    flow_step_triton = _triton_flow()
    heads, n, window = (4, 1), 37, 5
    q, _, _, scale, r, vn = make_case(heads, n, 80, window, q_dtype, seed=2)
    k = make_case(heads, n, 80, window, k_dtype, seed=3)[1]
    lse = lse_reference(q.double(), k.double(), scale, window).float()
    expected_flow, expected_r = oracle(q, k, lse, scale, r, vn, window)
    flow, r_next = flow_step_triton(*to_device(q, k, lse), scale, *to_device(r, vn), window, block_m=16, block_n=16)
    assert_rel_close("flow", expected_flow, flow, RTOL[torch.float32])
    assert_rel_close("r_next", expected_r, r_next, RTOL[torch.float32])


# (n, heads, dh, window, rows, dtype, softcap, pinned tiles): odd n, GQA 4:1 and 9:3, windows,
# float64 inputs (run in float32 by the kernel), small caps that bend most scores and
# Gemma-2's 50.
TRITON_SOFTCAP_CASES = [
    (37, (4, 1), 64, None, "general", torch.float32, 1.5, 16),
    (37, (4, 1), 80, 5, "onehot3", torch.float16, 1.5, None),
    (37, (4, 4), 64, None, "general", torch.float64, 3.0, 16),
    (129, (4, 1), 64, None, "general", torch.float32, 50.0, None),
    (129, (4, 1), 80, 18, "general", torch.float64, 1.5, 16),
    (129, (9, 3), 64, 40, "onehot3", torch.float16, 3.0, None),
    (129, (9, 3), 80, None, "onehot1", torch.float32, 1.5, None),
    (37, (4, 1), 80, 5, "general", torch.bfloat16, 1.5, 16),
    (129, (4, 1), 64, None, "onehot3", torch.bfloat16, 3.0, None),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("n,heads,dh,window,rows,dtype,softcap,tiles", TRITON_SOFTCAP_CASES)
def test_triton_softcap_matches_reference(n, heads, dh, window, rows, dtype, softcap, tiles):
    flow_step_triton = _triton_flow()
    case = make_case(heads, n, dh, window, dtype, rows=rows, seed=3 * n + dh, softcap=softcap)
    expected_flow, expected_r = oracle(*case, window, softcap)
    q, k, lse, scale, r, vn = case
    q, k, lse, r, vn = to_device(q, k, lse, r, vn)
    flow, r_next = flow_step_triton(q, k, lse, scale, r, vn, window, block_m=tiles, block_n=tiles, softcap=softcap)
    assert flow.dtype == torch.float32 and flow.shape == r.shape
    assert_rel_close("flow", expected_flow, flow, kernel_rtol(dtype))
    assert_rel_close("r_next", expected_r, r_next, kernel_rtol(dtype))


@pytest.mark.interpreter
def test_triton_softcap_saturates_without_overflow():
    """Scores far beyond the cap (|s| ~ 1e4 * c): tanh from exp saturates to +-1, no inf/NaN."""
    flow_step_triton = _triton_flow()
    softcap = 0.5
    case = make_case((4, 1), 37, 64, None, torch.float32, amp=2e3, softcap=softcap)
    expected_flow, expected_r = oracle(*case, None, softcap)
    flow, r_next = flow_step_triton(*case, softcap=softcap)
    assert torch.isfinite(flow).all() and torch.isfinite(r_next).all()
    assert_rel_close("flow", expected_flow, flow, kernel_rtol(torch.float32))
    assert_rel_close("r_next", expected_r, r_next, kernel_rtol(torch.float32))


@pytest.mark.interpreter
@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_triton_rejects_bad_softcap(bad):
    flow_step_triton = _triton_flow()
    q, k, lse, scale, r, vn = make_case((4, 2), 9, 16, None, torch.float32)
    with pytest.raises(ValueError, match="softcap"):
        flow_step_triton(*to_device(q, k, lse), scale, *to_device(r, vn), softcap=bad)
