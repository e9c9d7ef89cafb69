"""Tests for the fused vocabulary KL (heta_fast.ops.vocab_kl, heta_fast.kernels.vocab_kl).

Every fast path is compared with ``vocab_kl_reference`` evaluated in float64 on
the *same* (already rounded) inputs, so the tolerances only have to absorb the
fast path's own fp32 arithmetic.  The Triton kernel runs under
``TRITON_INTERPRET=1`` on CPU (set in tests/conftest.py) unless a GPU is present.
"""

from __future__ import annotations

import math

import pytest
import torch

import heta_fast.ops.utils as ops_utils
import heta_fast.ops.vocab_kl as vocab_kl_ops
from heta_fast.ops.vocab_kl import transform_logits, vocab_kl
from heta_fast.ops.vocab_kl.blocked import vocab_kl_blocked
from heta_fast.ops.vocab_kl.naive import vocab_kl_reference
from tests.ops.utils import EXACT, KL_TOL, RTOL, assert_close, force_triton, spy, triton_kernel

EXTREME = 1.0e4


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """Run this module's (small) tensor ops on one intra-op thread.

    The tensors here are tiny, so threading buys nothing, while on a shared
    2-core machine every parallel region can stall for a scheduler slice when
    the other core is busy (measured: ~6 ms per [4, 8192] reduction instead
    of ~3 us).  Restored afterwards so other test modules are unaffected.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ---------------------------------------------------------------------------
# case construction
# ---------------------------------------------------------------------------


def _ref_logp(n_targets: int, vocab: int, dist: str, gen: torch.Generator) -> torch.Tensor:
    """[T, V] float32 reference log-probabilities of a given shape of distribution."""
    if dist == "flat":
        return torch.full((n_targets, vocab), -math.log(vocab))
    if dist == "peaked":
        # Temperature 8 on standard normals: a few tokens carry almost all mass.
        return torch.log_softmax(8.0 * torch.randn(n_targets, vocab, generator=gen), -1)
    if dist == "sparse":
        # Support on ~10% of the vocabulary (at least one token), -inf elsewhere.
        scores = torch.randn(n_targets, vocab, generator=gen)
        keep = torch.rand(n_targets, vocab, generator=gen) < 0.1
        keep[:, 0] = True
        return torch.log_softmax(scores.masked_fill(~keep, float("-inf")), -1)
    if dist == "onehot":
        logp = torch.full((n_targets, vocab), float("-inf"))
        hot = torch.randint(0, vocab, (n_targets,), generator=gen)
        logp[torch.arange(n_targets), hot] = 0.0
        return logp
    raise ValueError(dist)


def make_case(
    vocab: int,
    dim: int,
    batch: int,
    *,
    dist: str = "peaked",
    dtype: torch.dtype = torch.float32,
    bias: bool = True,
    extreme: bool = False,
    n_targets: int = 3,
    seed: int = 0,
) -> dict:
    """Random inputs for one KL evaluation, all cast to ``dtype``.

    Shapes: hidden [B, d], weight [V, d], ref_logp [T, V], target_index [B], bias [V].
    With ``extreme`` the bias holds +-1e4 entries, so logits reach +-1e4.
    Values are drawn in float32 and then cast; the oracle always sees the cast values.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = 2.0 * torch.randn(batch, dim, generator=gen)
    weight = torch.randn(vocab, dim, generator=gen) / math.sqrt(dim)
    b = None
    if bias or extreme:
        b = torch.randn(vocab, generator=gen)
        if extreme:
            sign = torch.randint(0, 3, (vocab,), generator=gen).float() - 1.0  # -1, 0, +1
            b = b + EXTREME * sign
    case = {
        "hidden": hidden.to(dtype),
        "weight": weight.to(dtype),
        "ref_logp": _ref_logp(n_targets, vocab, dist, gen).to(dtype),
        "target_index": torch.randint(0, n_targets, (batch,), generator=gen),
        "bias": None if b is None else b.to(dtype),
    }
    return case


def oracle(case: dict, **transform) -> torch.Tensor:
    """float64 reference on the case's own (possibly rounded) values. [B]

    ``transform``: the final-logit transform (``logit_scale``, ``softcap``), if any.
    """
    up = {k: (v.double() if (v is not None and v.is_floating_point()) else v) for k, v in case.items()}
    return vocab_kl_reference(**up, **transform)


def logit_magnitude(case: dict, **transform) -> float:
    """max |z| over the batch: absolute rounding error of lse - z scales with it.

    With a transform: the larger of the raw and the transformed |z| (the fp32 logits are
    formed, and rounded, before the scale and cap shrink them).
    """
    z = case["hidden"].double() @ case["weight"].double().T
    if case["bias"] is not None:
        z = z + case["bias"].double()
    raw = float(z.abs().max())
    return max(1.0, raw, float(transform_logits(z, **transform).abs().max()))


def assert_kl_close(out: torch.Tensor, case: dict, input_dtype: torch.dtype, **transform) -> None:
    """Finite, right shape, and within dtype tolerances (KL_TOL) of the float64 oracle."""
    expected = oracle(case, **transform)
    assert out.shape == expected.shape
    assert torch.isfinite(out).all(), f"non-finite KL: {out}"
    rtol, atol_unit = KL_TOL[input_dtype]
    assert_close("KL", expected, out, atol=atol_unit * logit_magnitude(case, **transform), rtol=rtol)


# ---------------------------------------------------------------------------
# reference oracle: checked independently of itself
# ---------------------------------------------------------------------------


def test_reference_matches_kl_div_definition():
    """Oracle == torch's kl_div on explicitly built logits (strictly positive p)."""
    case = make_case(300, 16, 4, dist="peaked", dtype=torch.float64)
    z = case["hidden"] @ case["weight"].T + case["bias"]
    log_p = case["ref_logp"][case["target_index"]]
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(z, -1), log_p, reduction="none", log_target=True
    ).sum(-1)
    got = vocab_kl_reference(**case)
    assert got.dtype == torch.float64
    assert_close("KL", expected, got, EXACT, EXACT)


def test_reference_is_zero_for_identical_distributions():
    case = make_case(500, 8, 3, dtype=torch.float64, n_targets=3)
    case["target_index"] = torch.arange(3)
    z = case["hidden"] @ case["weight"].T + case["bias"]
    case["ref_logp"] = torch.log_softmax(z, -1)
    got = vocab_kl_reference(**case)
    assert got.dtype == torch.float64
    assert_close("KL", torch.zeros(3, dtype=torch.float64), got, atol=EXACT, rtol=0)


def test_reference_dtypes():
    case32 = make_case(100, 8, 2)
    assert vocab_kl_reference(**case32).dtype == torch.float32
    case64 = make_case(100, 8, 2, dtype=torch.float64)
    assert vocab_kl_reference(**case64).dtype == torch.float64


# ---------------------------------------------------------------------------
# blocked CPU path
# ---------------------------------------------------------------------------


BLOCKED_FP32_CASES = [
    (vocab, dim, dist)
    for vocab in (1, 1271, 50257)
    for dim in (37, 64)
    for dist in ("peaked", "flat", "sparse")
] + [(262144, 37, "peaked"), (262144, 64, "flat"), (262144, 37, "sparse")]


@pytest.mark.parametrize("vocab, dim, dist", BLOCKED_FP32_CASES)
def test_blocked_matches_reference_fp32(vocab, dim, dist):
    case = make_case(vocab, dim, 4, dist=dist)
    # Small chunks for small V so several chunks and a ragged tail are exercised.
    chunk = 500 if vocab < 8192 else 8192
    out = vocab_kl_blocked(**case, chunk_size=chunk)
    assert out.dtype == torch.float32
    assert_kl_close(out, case, torch.float32)


@pytest.mark.parametrize("vocab", [1, 1271, 50257])
@pytest.mark.parametrize("dist", ["peaked", "flat", "onehot"])
def test_blocked_matches_reference_fp64(vocab, dist):
    case = make_case(vocab, 37, 5, dist=dist, dtype=torch.float64)
    out = vocab_kl_blocked(**case, chunk_size=777)
    assert out.dtype == torch.float64
    assert_kl_close(out, case, torch.float64)
    # The float64 reference on the same inputs, not only the oracle helper.
    assert_close("KL", vocab_kl_reference(**case), out, atol=RTOL[torch.float64], rtol=RTOL[torch.float64])


@pytest.mark.parametrize("vocab", [1271, 50257])
@pytest.mark.parametrize("dist", ["peaked", "flat"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_blocked_half_precision_inputs(vocab, dist, dtype):
    case = make_case(vocab, 64, 4, dist=dist, dtype=dtype)
    out = vocab_kl_blocked(**case, chunk_size=4096)
    assert out.dtype == torch.float32
    assert_kl_close(out, case, dtype)


@pytest.mark.parametrize("dist", ["peaked", "sparse", "onehot"])
def test_blocked_extreme_logits(dist):
    case = make_case(1271, 37, 6, dist=dist, extreme=True)
    assert logit_magnitude(case) > 0.9 * EXTREME
    out = vocab_kl_blocked(**case, chunk_size=300)
    assert_kl_close(out, case, torch.float32)


def test_blocked_zero_probabilities_do_not_make_nan():
    """-inf reference entries in every chunk, including whole chunks of them."""
    case = make_case(2000, 16, 3, dist="onehot")
    out = vocab_kl_blocked(**case, chunk_size=64)
    assert_kl_close(out, case, torch.float32)


def test_blocked_chunk_size_does_not_change_result():
    case = make_case(1271, 37, 4, dist="sparse")
    results = [vocab_kl_blocked(**case, chunk_size=c) for c in (1, 128, 1271, 100000)]
    for r in results[1:]:
        assert r.dtype == torch.float32
        assert_close("KL", results[0], r, atol=1e-5, rtol=1e-5)


def test_blocked_without_bias_and_int32_index():
    case = make_case(1271, 64, 4, bias=False)
    case["target_index"] = case["target_index"].to(torch.int32)
    assert_kl_close(vocab_kl_blocked(**case), case, torch.float32)


def test_blocked_empty_batch():
    case = make_case(100, 8, 0)
    out = vocab_kl_blocked(**case)
    assert out.shape == (0,) and out.dtype == torch.float32


# ---------------------------------------------------------------------------
# dispatcher and validation
# ---------------------------------------------------------------------------


def test_dispatcher_uses_blocked_path_on_cpu(monkeypatch):
    calls = spy(monkeypatch, vocab_kl_ops, "vocab_kl_blocked")
    case = make_case(1271, 37, 4)
    assert vocab_kl(**case, chunk_size=300).dtype == torch.float32
    assert len(calls) == 1 and calls[0][1] == {"chunk_size": 300, "logit_scale": 1.0, "softcap": None}
    out = vocab_kl(**case, chunk_size=300, logit_scale=0.25, softcap=5.0)
    assert len(calls) == 2 and calls[1][1] == {"chunk_size": 300, "logit_scale": 0.25, "softcap": 5.0}
    assert_kl_close(out, case, torch.float32, logit_scale=0.25, softcap=5.0)


@pytest.mark.interpreter
def test_dispatcher_triton_branch_matches_reference(monkeypatch):
    """The dispatcher's Triton branch (forced onto CPU tensors under the interpreter)."""
    device, kernel_calls = force_triton(monkeypatch, "vocab_kl", "vocab_kl_triton")
    case = make_case(1271, 37, 4)
    out = vocab_kl(**{k: v.to(device) for k, v in case.items()})
    assert len(kernel_calls) == 1
    assert out.dtype == torch.float32 and out.device.type == device
    assert_kl_close(out, case, torch.float32)


def test_dispatcher_float64_stays_on_blocked_path(monkeypatch):
    """float64 inputs never take the (float32) Triton branch, even where it would run."""
    monkeypatch.setattr(ops_utils, "triton_device", lambda t: True)
    calls = spy(monkeypatch, vocab_kl_ops, "vocab_kl_blocked")
    case = make_case(1271, 37, 4, dtype=torch.float64)
    assert vocab_kl(**case).dtype == torch.float64
    assert len(calls) == 1


def _bad(**changes):
    case = make_case(50, 8, 3)
    case.update(changes)
    return case


_BAD_CASES = [
    (_bad(hidden=torch.zeros(3, 8, 1)), "hidden must be 2-D"),
    (_bad(weight=torch.zeros(50)), "weight must be 2-D"),
    (_bad(hidden=torch.zeros(3, 9)), "hidden size mismatch"),
    (_bad(weight=torch.zeros(0, 8), ref_logp=torch.zeros(3, 0), bias=None), "at least one"),
    (_bad(ref_logp=torch.zeros(3, 49)), "ref_logp must be"),
    (_bad(target_index=torch.zeros(2, dtype=torch.long)), "target_index must be \\[B\\]"),
    (_bad(target_index=torch.zeros(3)), "int32 or int64"),
    (_bad(target_index=torch.tensor([0, 1, 3])), "target_index values"),
    (_bad(target_index=torch.tensor([0, -1, 2])), "target_index values"),
    (_bad(bias=torch.zeros(49)), "bias must be"),
    (_bad(hidden=torch.zeros(3, 8, dtype=torch.long)), "floating-point"),
    (_bad(hidden=torch.zeros(3, 8, device="meta")), "same device"),
]


@pytest.mark.parametrize("case, match", _BAD_CASES)
@pytest.mark.parametrize("fn", [vocab_kl_reference, vocab_kl_blocked, vocab_kl])
def test_validation_errors(fn, case, match):
    with pytest.raises(ValueError, match=match):
        fn(**case)


@pytest.mark.interpreter
@pytest.mark.parametrize("case, match", _BAD_CASES)
def test_dispatcher_triton_branch_validates(monkeypatch, case, match):
    """The op's full validation also guards the Triton branch (the kernel's own checks are minimal)."""
    _, kernel_calls = force_triton(monkeypatch, "vocab_kl", "vocab_kl_triton")
    with pytest.raises(ValueError, match=match):
        vocab_kl(**case)
    assert not kernel_calls


def test_blocked_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        vocab_kl_blocked(**make_case(50, 8, 3), chunk_size=0)


# ---------------------------------------------------------------------------
# Triton kernel (interpreter on CPU, native on a GPU)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_kl():
    """``vocab_kl_triton`` and the device its inputs must live on."""
    return triton_kernel("vocab_kl", "vocab_kl_triton")


def run_triton(triton_kl, case: dict, **kwargs) -> torch.Tensor:
    kernel, device = triton_kl
    moved = {k: (None if v is None else v.to(device)) for k, v in case.items()}
    return kernel(**moved, **kwargs)


# (vocab, dim, batch, dist, dtype, kernel kwargs).  Default tiles are
# BLOCK_B=16, BLOCK_V=256, BLOCK_D=32: d=37 and V=1271 leave ragged tails, B=20
# spans two row blocks; the large vocabularies use wider tiles to keep the
# interpreter fast (~1.5 s for V=262144).
TRITON_CASES = [
    pytest.param(1, 16, 3, "peaked", torch.float32, {}, id="V1"),
    pytest.param(1271, 37, 5, "peaked", torch.float32, {}, id="V1271-d37-peaked"),
    pytest.param(1271, 64, 20, "flat", torch.float32, {}, id="V1271-d64-flat-2rowblocks"),
    pytest.param(1271, 37, 4, "sparse", torch.float32, {"v_per_split": 300}, id="V1271-sparse-splits"),
    pytest.param(1271, 37, 4, "onehot", torch.float32, {"block_v": 64, "block_d": 16}, id="V1271-onehot-small-tiles"),
    pytest.param(1271, 37, 5, "peaked", torch.float16, {}, id="V1271-fp16-peaked"),
    pytest.param(1271, 64, 5, "flat", torch.float16, {}, id="V1271-fp16-flat"),
    # bf16: the interpreter widens the dot operands (it holds bf16 as uint16 bit patterns).
    pytest.param(1271, 37, 5, "peaked", torch.bfloat16, {}, id="V1271-bf16-peaked"),
    pytest.param(1271, 64, 20, "flat", torch.bfloat16, {}, id="V1271-bf16-flat-2rowblocks"),
    pytest.param(1271, 37, 4, "sparse", torch.bfloat16, {"v_per_split": 300, "block_v": 64, "block_d": 16},
                 id="V1271-bf16-sparse-splits-small-tiles"),
    pytest.param(50257, 37, 4, "peaked", torch.float32, {"block_v": 512}, id="V50257-d37-peaked"),
    pytest.param(50257, 64, 3, "flat", torch.float16, {"block_v": 1024, "block_d": 64}, id="V50257-fp16-flat"),
    pytest.param(262144, 32, 2, "peaked", torch.float32, {"block_v": 1024}, id="V262144"),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("vocab, dim, batch, dist, dtype, kwargs", TRITON_CASES)
def test_triton_matches_reference(triton_kl, vocab, dim, batch, dist, dtype, kwargs):
    case = make_case(vocab, dim, batch, dist=dist, dtype=dtype)
    out = run_triton(triton_kl, case, **kwargs)
    assert out.dtype == torch.float32
    assert_kl_close(out, case, dtype)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dist", ["peaked", "onehot"])
def test_triton_extreme_logits(triton_kl, dtype, dist):
    case = make_case(1271, 37, 5, dist=dist, dtype=dtype, extreme=True)
    assert logit_magnitude(case) > 0.9 * EXTREME
    out = run_triton(triton_kl, case, v_per_split=500)
    assert_kl_close(out, case, dtype)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    ("hidden_dtype", "weight_dtype"), [(torch.float16, torch.float32), (torch.bfloat16, torch.float16)]
)
def test_triton_mixed_dtypes(triton_kl, hidden_dtype, weight_dtype):
    """Half-precision hidden with a weight of another dtype: multiplied in fp32."""
    case = make_case(1271, 37, 5, dist="sparse")
    case["hidden"] = case["hidden"].to(hidden_dtype)
    case["weight"] = case["weight"].to(weight_dtype)
    assert_kl_close(run_triton(triton_kl, case), case, torch.float32)


@pytest.mark.interpreter
@pytest.mark.parametrize("kwargs", [{"block_v": 100}, {"block_d": 8}, {"v_per_split": 0}])
def test_triton_rejects_bad_launch_parameters(triton_kl, kwargs):
    with pytest.raises(ValueError):
        run_triton(triton_kl, make_case(100, 8, 2), **kwargs)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "changes",
    [
        {"hidden": torch.zeros(3, 9)},
        {"ref_logp": torch.zeros(3, 49)},
        {"target_index": torch.zeros(2, dtype=torch.long)},
        {"target_index": torch.tensor([0, 1, 3])},
        {"bias": torch.zeros(49)},
        {"weight": torch.zeros(0, 8), "ref_logp": torch.zeros(3, 0), "bias": None},
    ],
)
def test_triton_checks_shapes_and_targets(triton_kl, changes):
    """The kernel's own (minimal) checks: shapes, and target rows it would read out of bounds."""
    case = make_case(50, 8, 3)
    case.update(changes)
    with pytest.raises(ValueError):
        run_triton(triton_kl, case)


@pytest.mark.interpreter
def test_triton_strided_inputs_and_int32_index(triton_kl):
    """Non-contiguous hidden/weight/ref_logp/bias views exercise the stride arguments."""
    case = make_case(1271, 37, 6, dist="sparse")
    case["weight"] = case["weight"].T.contiguous().T  # [V, d] with strides (1, V)
    case["hidden"] = torch.cat([case["hidden"], case["hidden"]], dim=1)[:, ::2]  # stride 2 in d
    case["ref_logp"] = case["ref_logp"].T.contiguous().T
    case["bias"] = torch.stack([case["bias"], -case["bias"]], dim=1)[:, 0]  # stride 2
    case["target_index"] = case["target_index"].to(torch.int32)
    for name in ("weight", "hidden", "ref_logp", "bias"):
        assert not case[name].is_contiguous(), name
    assert_kl_close(run_triton(triton_kl, case), case, torch.float32)


@pytest.mark.interpreter
def test_triton_empty_batch(triton_kl):
    out = run_triton(triton_kl, make_case(100, 8, 0))
    assert out.shape == (0,) and out.dtype == torch.float32


# ---------------------------------------------------------------------------
# final-logit transforms: logit_scale (Granite 1 / logits_scaling, Cohere-style multipliers)
# and softcap (Gemma-2/3 final_logit_softcapping)
# ---------------------------------------------------------------------------

# Logits of these cases are ~N(0, 2.2^2): a cap of 3 bends most of them, 30 is Gemma-2's value.
TRANSFORMS = [
    pytest.param({"logit_scale": 0.125}, id="scale1/8"),
    pytest.param({"logit_scale": 4.0}, id="scale4"),
    pytest.param({"softcap": 3.0}, id="cap3"),
    pytest.param({"softcap": 30.0}, id="cap30"),
    pytest.param({"logit_scale": 2.0, "softcap": 3.0}, id="scale2-cap3"),
]


def _transformed_logits_by_hand(case: dict, logit_scale: float = 1.0, softcap: float | None = None):
    """The transform written out from its definition (float64), sharing no code with the ops."""
    z = case["hidden"].double() @ case["weight"].double().T
    if case["bias"] is not None:
        z = z + case["bias"].double()
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_reference_transform_matches_kl_div_definition(transform):
    case = make_case(300, 16, 4, dist="peaked", dtype=torch.float64)
    z = _transformed_logits_by_hand(case, **transform)
    log_p = case["ref_logp"][case["target_index"]]
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(z, -1), log_p, reduction="none", log_target=True
    ).sum(-1)
    got = vocab_kl_reference(**case, **transform)
    assert_close("KL", expected, got, EXACT, EXACT)
    # The transform matters: the untransformed KL is far away.
    assert (got - vocab_kl_reference(**case)).abs().max() > 1e-3


def test_scale_is_applied_before_the_cap():
    case = make_case(300, 16, 4, dtype=torch.float64)
    got = vocab_kl_reference(**case, logit_scale=2.0, softcap=3.0)
    log_p = case["ref_logp"][case["target_index"]]
    raw = _transformed_logits_by_hand(case)
    wrong_order = 2.0 * (3.0 * torch.tanh(raw / 3.0))
    wrong = torch.nn.functional.kl_div(torch.log_softmax(wrong_order, -1), log_p, reduction="none", log_target=True)
    assert (got - wrong.sum(-1)).abs().max() > 1e-3


def test_transform_logits_helper():
    z = torch.randn(3, 50, dtype=torch.float64)
    assert transform_logits(z) is z  # defaults: no operation at all
    assert transform_logits(z, 1.0, None, inplace=True) is z
    assert torch.equal(transform_logits(z, 0.5), z * 0.5)
    assert torch.equal(transform_logits(z, softcap=2.0), torch.tanh(z / 2.0) * 2.0)
    assert_close("z", 2.0 * torch.tanh(z * 0.5 / 2.0), transform_logits(z, 0.5, 2.0), EXACT, EXACT)
    before = z.clone()
    transform_logits(z, 0.5, 2.0)
    assert torch.equal(z, before)  # not in place unless asked
    out = transform_logits(z, 0.5, 2.0, inplace=True)
    assert out.data_ptr() == z.data_ptr() and not torch.equal(z, before)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", [1, 1271, 50257])
def test_blocked_transform_matches_reference(vocab, dtype, transform, bias):
    case = make_case(vocab, 37, 5, dist="peaked", dtype=dtype, bias=bias, seed=vocab)
    out = vocab_kl_blocked(**case, chunk_size=500 if vocab < 8192 else 8192, **transform)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_kl_close(out, case, dtype, **transform)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_blocked_transform_chunk_size_does_not_change_result(transform):
    case = make_case(1271, 37, 4, dist="sparse")
    results = [vocab_kl_blocked(**case, chunk_size=c, **transform) for c in (1, 128, 1271, 100000)]
    for r in results[1:]:
        assert_close("KL", results[0], r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dist", ["peaked", "onehot"])
def test_blocked_softcap_extreme_logits(dist):
    """|z| ~ 1e4 capped at 30: the capped logits saturate, the KL stays finite and exact."""
    case = make_case(1271, 37, 6, dist=dist, extreme=True)
    out = vocab_kl_blocked(**case, chunk_size=300, softcap=30.0)
    assert_kl_close(out, case, torch.float32, softcap=30.0)


def test_default_transform_is_the_plain_computation():
    """logit_scale=1.0 and softcap=None are off: no operation on the logits, and every path's KL is
    the plain one, sum_v p_v (log p_v - log softmax(hidden W^T + b)_v), written out here."""
    logits = torch.randn(4, 1271)
    assert transform_logits(logits) is logits and transform_logits(logits, 1.0, None) is logits
    case = make_case(1271, 37, 4, dtype=torch.float64)
    p_log = case["ref_logp"][case["target_index"]]
    q_log = torch.log_softmax(case["hidden"] @ case["weight"].T + case["bias"], dim=-1)
    plain = (p_log.exp() * (p_log - q_log)).sum(-1)
    for got in (vocab_kl_blocked(**case, chunk_size=300), vocab_kl(**case), vocab_kl_reference(**case)):
        assert_close("KL", plain, got, atol=1e-12, rtol=1e-10)


_BAD_TRANSFORMS = [
    ({"logit_scale": 0.0}, "logit_scale"),
    ({"logit_scale": -1.0}, "logit_scale"),
    ({"logit_scale": float("nan")}, "logit_scale"),
    ({"logit_scale": float("inf")}, "logit_scale"),
    ({"logit_scale": None}, "logit_scale"),
    ({"softcap": 0.0}, "softcap"),
    ({"softcap": -30.0}, "softcap"),
    ({"softcap": float("nan")}, "softcap"),
    ({"softcap": float("inf")}, "softcap"),
    ({"softcap": True}, "softcap"),
]


@pytest.mark.parametrize("transform, match", _BAD_TRANSFORMS)
@pytest.mark.parametrize("fn", [vocab_kl_reference, vocab_kl_blocked, vocab_kl])
def test_bad_transform_raises(fn, transform, match):
    with pytest.raises(ValueError, match=match):
        fn(**make_case(50, 8, 3), **transform)


@pytest.mark.interpreter
@pytest.mark.parametrize("transform, match", _BAD_TRANSFORMS)
def test_triton_rejects_bad_transform(triton_kl, monkeypatch, transform, match):
    with pytest.raises(ValueError, match=match):
        run_triton(triton_kl, make_case(50, 8, 3), **transform)
    _, kernel_calls = force_triton(monkeypatch, "vocab_kl", "vocab_kl_triton")
    with pytest.raises(ValueError, match=match):
        vocab_kl(**make_case(50, 8, 3), **transform)
    assert not kernel_calls


@pytest.mark.interpreter
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_dispatcher_triton_branch_transform(monkeypatch, transform):
    device, kernel_calls = force_triton(monkeypatch, "vocab_kl", "vocab_kl_triton")
    case = make_case(1271, 37, 4)
    out = vocab_kl(**{k: v.to(device) for k, v in case.items()}, **transform)
    assert len(kernel_calls) == 1
    assert kernel_calls[0][1] == {"logit_scale": 1.0, "softcap": None, **transform}
    assert_kl_close(out, case, torch.float32, **transform)


# (vocab, dim, batch, dist, dtype, bias, transform, kernel kwargs)
TRITON_TRANSFORM_CASES = [
    pytest.param(1, 16, 3, "peaked", torch.float32, True, {"softcap": 3.0}, {}, id="V1-cap3"),
    pytest.param(1271, 37, 5, "peaked", torch.float32, True, {"logit_scale": 0.125}, {}, id="V1271-scale"),
    pytest.param(1271, 37, 5, "sparse", torch.float32, False, {"softcap": 3.0}, {"v_per_split": 300},
                 id="V1271-cap3-nobias-splits"),
    pytest.param(1271, 64, 20, "flat", torch.float32, True, {"logit_scale": 2.0, "softcap": 3.0}, {},
                 id="V1271-scale-cap-2rowblocks"),
    pytest.param(1271, 37, 5, "peaked", torch.float16, True, {"softcap": 30.0}, {}, id="V1271-fp16-cap30"),
    pytest.param(1271, 37, 5, "onehot", torch.float16, False, {"logit_scale": 4.0, "softcap": 3.0}, {},
                 id="V1271-fp16-nobias-scale-cap"),
    pytest.param(1271, 37, 5, "peaked", torch.bfloat16, True, {"softcap": 3.0}, {}, id="V1271-bf16-cap3"),
    pytest.param(50257, 37, 4, "peaked", torch.float32, True, {"softcap": 30.0}, {"block_v": 512},
                 id="V50257-cap30"),
    pytest.param(50257, 64, 3, "flat", torch.float16, False, {"logit_scale": 0.5, "softcap": 3.0},
                 {"block_v": 1024, "block_d": 64}, id="V50257-fp16-nobias-scale-cap"),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("vocab, dim, batch, dist, dtype, bias, transform, kwargs", TRITON_TRANSFORM_CASES)
def test_triton_transform_matches_reference(triton_kl, vocab, dim, batch, dist, dtype, bias, transform, kwargs):
    case = make_case(vocab, dim, batch, dist=dist, dtype=dtype, bias=bias)
    out = run_triton(triton_kl, case, **kwargs, **transform)
    assert out.dtype == torch.float32
    assert_kl_close(out, case, dtype, **transform)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dist", ["peaked", "onehot"])
def test_triton_softcap_extreme_logits(triton_kl, dtype, dist):
    """|z| ~ 1e4 against a cap of 30: tanh from exp saturates without overflow or NaN."""
    case = make_case(1271, 37, 5, dist=dist, dtype=dtype, extreme=True)
    out = run_triton(triton_kl, case, v_per_split=500, softcap=30.0)
    assert_kl_close(out, case, dtype, softcap=30.0)
