"""The reference engine against exact computations written independently here."""
import itertools
import math

import pytest
import torch
from torch.func import hessian

from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import (
    combine,
    curvature_reference,
    flow_gate_reference,
    information_reference,
    rademacher_probes,
    target_log_prob,
    value_norms_reference,
)
from tests.tiny_models import tiny_model


def _adapter(arch="llama", **kw):
    return ModelAdapter(tiny_model(arch, **kw))


# ---------------------------------------------------------------------------- flow gate
def _flow_by_path_enumeration(attn, vnorm, p, n_context):
    """M[i] = Σ over layers l, heads h, and every path from p at the top down to position j at
    layer l's output, of (product of the path's edge weights) · A^(l,h)[j, i] · vn^(l,h)[i].
    An edge of layer l' from j' to j is one of: head g of layer l' with weight A^(l',g)[j', j] / (2H),
    or the residual (j == j') with weight 1/2, divided by the sum of Â's row j' (eager attention
    computes softmax in float32, so rows sum to one only to ~1e-7)."""
    L, H, n = len(attn), attn[0].shape[0], attn[0].shape[-1]
    m = torch.zeros(n, dtype=torch.float64)
    for layer in range(L):  # layer index, bottom = 0; the layers above it are traversed first
        above = list(range(L - 1, layer, -1))
        edges = [("res", None)] + [("head", g) for g in range(H)]
        for choice in itertools.product(edges, repeat=len(above)):
            for positions in itertools.product(range(n), repeat=len(above)):
                weight, cur = 1.0, p
                for lay, (kind, g), nxt in zip(above, choice, positions):
                    if kind == "res":
                        w = 0.5 if nxt == cur else 0.0
                    else:
                        w = float(attn[lay][g, cur, nxt]) / (2 * H)
                    row_sum = 0.5 + float(attn[lay][:, cur, :].sum()) / (2 * H)
                    weight *= w / row_sum
                    cur = nxt
                    if weight == 0.0:
                        break
                if weight == 0.0:
                    continue
                for h in range(H):
                    for i in range(n):
                        m[i] += weight * float(attn[layer][h, cur, i]) * float(vnorm[layer][h, i])
    m = m[:n_context]
    return m / m.sum()


def test_flow_gate_equals_path_enumeration_on_a_two_layer_model():
    adapter = _adapter("llama")  # 2 layers, GQA 4:2
    cap = adapter.capture_matrices(adapter.embed(torch.tensor([3, 17, 8, 41, 5])))
    norms = [value_norms_reference(v, w) for v, w in zip(cap.values, cap.out_proj)]
    for p, n_ctx in ((4, 5), (3, 3)):
        got = flow_gate_reference(cap.attentions, norms, torch.tensor([p]), n_ctx)[0]
        want = _flow_by_path_enumeration(cap.attentions, norms, p, n_ctx)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_value_norms_use_the_kv_head_each_query_head_reads():
    v = torch.randn(2, 6, 4, dtype=torch.float64)      # 2 KV heads
    w = torch.randn(4, 4, 8, dtype=torch.float64)      # 4 query heads
    got = value_norms_reference(v, w)
    for h in range(4):
        for i in range(6):
            want = sum(abs(float(x)) for x in v[h // 2, i] @ w[h])
            assert math.isclose(float(got[h, i]), want, rel_tol=1e-12)


def test_flow_rows_are_on_the_simplex_and_causal():
    adapter = _adapter("gpt2")
    cap = adapter.capture_matrices(adapter.embed(torch.arange(7)))
    norms = [value_norms_reference(v, w) for v, w in zip(cap.values, cap.out_proj)]
    m = flow_gate_reference(cap.attentions, norms, torch.tensor([3, 6]), 7)
    torch.testing.assert_close(m.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.all(m[0, 4:] == 0), "no flow may reach tokens after the predicting position"
    assert torch.all(m >= 0)


# ---------------------------------------------------------------------------- curvature
def _exact_hessian_blocks(adapter, x, p, tok):
    h = hessian(lambda e: target_log_prob(adapter, e, p, tok))(x)  # [n, d, n, d]
    return torch.stack([h[i, :, i, :] for i in range(x.shape[0])])  # [n, d, d]


# transformers' Llama casts to float32 inside RMSNorm and the rotary tables, so a float64
# Llama agrees with itself only to ~1e-7 across different orders of computation; GPT-2 is
# float64 throughout.
@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-9), ("llama", 1e-6)])
def test_curvature_equals_exact_hessian_blocks_with_the_same_probes(arch, rtol):
    adapter = _adapter(arch)
    x = adapter.embed(torch.tensor([5, 9, 2, 30, 11]))
    p, tok, n_ctx = 4, 7, 4
    probes = rademacher_probes(n_ctx, 3, x.shape[-1], seed=1)
    got = curvature_reference(adapter, x, p, tok, n_ctx, probes)
    blocks = _exact_hessian_blocks(adapter, x[: p + 1], p, tok)
    want = torch.stack([torch.stack([(blocks[i] @ probes[i, k]).abs().sum() for k in range(3)]).mean()
                        for i in range(n_ctx)])
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-10)


def test_curvature_estimate_converges_to_the_expectation_over_all_sign_vectors():
    """With d = 16 there are 2^16 sign vectors: the exact expectation E‖H_ii r‖₁ is computable.
    The estimate from m probes must lie within 5 standard errors of it."""
    adapter = _adapter("llama")
    x = adapter.embed(torch.tensor([1, 2, 3]))
    blocks = _exact_hessian_blocks(adapter, x, 2, 5)
    d = x.shape[-1]
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)  # [2^d, d]
    m = 64
    probes = rademacher_probes(2, m, d, seed=3)
    got = curvature_reference(adapter, x, 2, 5, 2, probes)
    for i in range(2):
        norms = (signs @ blocks[i].t()).abs().sum(-1)
        mean, std = norms.mean(), norms.std()
        assert abs(float(got[i] - mean)) < 5 * float(std) / math.sqrt(m) + 1e-12


def test_probes_are_seeded_rademacher_blocks():
    a = rademacher_probes(3, 4, 8, seed=7)
    assert a.shape == (3, 4, 8) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, rademacher_probes(3, 4, 8, seed=7))
    assert not torch.equal(a, rademacher_probes(3, 4, 8, seed=8))


# ---------------------------------------------------------------------------- information
def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    s = sum(e)
    return [v / s for v in e]


def test_information_equals_a_hand_written_kl():
    adapter = _adapter("qwen2")
    ids = torch.tensor([4, 8, 15, 16, 23])
    x = adapter.embed(ids)
    masks = torch.zeros(5, x.shape[-1], dtype=torch.float64)
    got = information_reference(adapter, x, torch.tensor([4]), 5, masks)
    with torch.no_grad():
        z = adapter.model(inputs_embeds=x[None]).logits[0, 4].tolist()
        for i in range(5):
            xm = x.clone()
            xm[i] = 0
            zq = adapter.model(inputs_embeds=xm[None]).logits[0, 4].tolist()
            p, q = _softmax(z), _softmax(zq)
            want = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            assert math.isclose(float(got[0, i]), want, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj", "phi3"])
def test_masking_a_token_changes_no_earlier_hidden_state(arch):
    adapter = _adapter(arch)
    x = adapter.embed(torch.tensor([3, 1, 4, 1, 5, 9]))
    i = 3
    xm = x.clone()
    xm[i] = 0
    with torch.no_grad():
        a = adapter.model(inputs_embeds=x[None], output_hidden_states=True).hidden_states
        b = adapter.model(inputs_embeds=xm[None], output_hidden_states=True).hidden_states
    for ha, hb in zip(a, b):
        torch.testing.assert_close(ha[0, :i], hb[0, :i], rtol=0, atol=0)
        assert not torch.allclose(ha[0, i:], hb[0, i:])


# ---------------------------------------------------------------------------- combination
def test_combine_uses_only_present_components():
    m, s, i = (torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 6.0]]))
    torch.testing.assert_close(combine(m, s, i, 0.5, 0.5), m * (0.5 * s + 0.5 * i))
    torch.testing.assert_close(combine(None, s, i, 0.2, 0.8), 0.2 * s + 0.8 * i)
    torch.testing.assert_close(combine(m, None, None, 0.5, 0.5), m)
    torch.testing.assert_close(combine(m, None, i, 0.5, 0.3), m * 0.3 * i)
