"""Metrics against hand-computed values: a toy linear LM (exact by hand) and a tiny transformer."""
import math

import pytest
import torch

from heta_fast.evaluate.metrics import (
    comprehensiveness,
    dsa,
    f1_alignment,
    hard_faithfulness,
    hellinger,
    normalise_unit,
    soft_faithfulness,
    soft_nc,
    soft_ns,
    sufficiency,
    top_count,
)
from tests.evaluate.toy import ToyLM, hellinger_by_hand
from tests.tiny_models import tiny_model

IDS = torch.tensor([1, 4, 6])


# ----------------------------------------------------------------------------- helpers
def test_hellinger_hand_values():
    assert float(hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)
    assert float(hellinger(torch.tensor([0.3, 0.7]), torch.tensor([0.3, 0.7]))) == pytest.approx(0.0)
    expected = math.sqrt(((math.sqrt(0.5) - 1) ** 2 + 0.5) / 2)
    assert float(hellinger(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))) == pytest.approx(expected)


def test_normalise_unit_and_top_count():
    assert normalise_unit(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalise_unit(torch.tensor([-1.0, 1.0])).tolist() == [0.0, 1.0]
    assert normalise_unit(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]
    assert [top_count(10, 0.1), top_count(10, 0.3), top_count(55, 0.3), top_count(5, 0.1)] == [1, 3, 16, 1]
    assert [top_count(9, 0.3), top_count(25, 0.3)] == [2, 7]  # floor, not round


# ----------------------------------------------------------------------------- Soft-NS / Soft-NC
def test_soft_metrics_binary_scores_by_hand():
    # q = [1, 0, 0]: Soft-S keeps exactly token 0, Soft-C erases exactly token 0 (any seed).
    lm = ToyLM()
    x = lm.emb(IDS).detach()
    p = lm.probs_of(x)
    s = 1 - hellinger_by_hand(p, lm.probs_of(x * torch.tensor([[1.0], [0.0], [0.0]])))
    c = hellinger_by_hand(p, lm.probs_of(x * torch.tensor([[0.0], [1.0], [1.0]])))
    s0 = 1 - hellinger_by_hand(p, lm.probs_of(torch.zeros_like(x)))
    res = soft_faithfulness(lm, IDS, 2, torch.tensor([3.0, 0.0, 0.0]), samples=3, seed=5)
    assert res.s0 == pytest.approx(s0, abs=1e-12)
    assert res.sufficiency == pytest.approx(s, abs=1e-12) and res.comprehensiveness == pytest.approx(c, abs=1e-12)
    assert res.soft_ns == pytest.approx(max(0.0, s - s0) / (1 - s0), abs=1e-12)
    assert res.soft_nc == pytest.approx(c / (1 - s0), abs=1e-12)
    assert soft_ns(lm, IDS, 2, torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(res.soft_ns)
    assert soft_nc(lm, IDS, 2, torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(res.soft_nc)


def test_soft_metrics_reproduce_the_documented_seeded_masks():
    lm = ToyLM(d=4)
    x = lm.emb(IDS).detach()
    scores = torch.tensor([2.0, 1.5, 1.0])  # q = [1, 0.5, 0]
    K, seed = 6, 11
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    keep_s = torch.rand(K, 3, 4, generator=g, dtype=torch.float64) < q[None, :, None]
    keep_c = torch.rand(K, 3, 4, generator=g, dtype=torch.float64) < (1 - q)[None, :, None]
    p = lm.probs_of(x)
    s = 1 - sum(hellinger_by_hand(p, lm.probs_of(x * keep_s[k])) for k in range(K)) / K
    c = sum(hellinger_by_hand(p, lm.probs_of(x * keep_c[k])) for k in range(K)) / K
    s0 = 1 - hellinger_by_hand(p, lm.probs_of(torch.zeros_like(x)))
    res = soft_faithfulness(lm, IDS, 0, scores, samples=K, seed=seed, max_batch=4)  # chunked batches too
    assert res.sufficiency == pytest.approx(s, abs=1e-12)
    assert res.comprehensiveness == pytest.approx(c, abs=1e-12)
    assert res.soft_ns == pytest.approx(max(0.0, s - s0) / (1 - s0), abs=1e-12)
    again = soft_faithfulness(lm, IDS, 0, scores, samples=K, seed=seed)
    other = soft_faithfulness(lm, IDS, 0, scores, samples=K, seed=seed + 1)
    assert again.soft_nc == pytest.approx(res.soft_nc, abs=1e-12)
    assert again.soft_ns == pytest.approx(res.soft_ns, abs=1e-12)
    assert abs(other.soft_nc - res.soft_nc) > 1e-6


def test_conditioning_positions_beyond_the_scores_are_never_erased():
    lm = ToyLM()
    x = lm.emb(IDS).detach()
    res = soft_faithfulness(lm, IDS, 0, torch.tensor([1.0, 0.0]))  # scores cover 2 of 3 positions
    p = lm.probs_of(x)
    empty = x.clone()
    empty[:2] = 0
    assert res.s0 == pytest.approx(1 - hellinger_by_hand(p, lm.probs_of(empty)), abs=1e-12)


def test_soft_metrics_on_a_tiny_transformer():
    model = tiny_model("llama")
    ids = torch.tensor([5, 9, 13, 20, 31])
    emb = model.get_input_embeddings()
    x = emb(ids).detach()

    def probs(e):
        with torch.no_grad():
            return torch.softmax(model(inputs_embeds=e[None]).logits[0, -1].double(), -1)

    p = probs(x)
    s0 = 1 - hellinger_by_hand(p, probs(torch.zeros_like(x)))
    # One top token (q binary): deterministic masks.
    scores = torch.tensor([0.0, 0.0, 7.0, 0.0, 0.0])
    only = torch.zeros_like(x)
    only[2] = x[2]
    without = x.clone()
    without[2] = 0
    s, c = 1 - hellinger_by_hand(p, probs(only)), hellinger_by_hand(p, probs(without))
    res = soft_faithfulness(model, ids, 0, scores, samples=2)
    assert res.s0 == pytest.approx(s0, abs=1e-9)
    assert res.soft_ns == pytest.approx(max(0, s - s0) / (1 - s0), abs=1e-9)
    assert res.soft_nc == pytest.approx(c / (1 - s0), abs=1e-9)
    # Constant scores rank nothing: Soft-S erases all (S = S0), Soft-C keeps all (C = 0).
    flat = soft_faithfulness(model, ids, 0, torch.ones(5), samples=2)
    assert flat.soft_ns == 0.0 and flat.soft_nc == pytest.approx(0.0, abs=1e-12)
    assert flat.sufficiency == pytest.approx(flat.s0, abs=1e-12)


# ----------------------------------------------------------------------------- hard metrics
@pytest.mark.parametrize("measure", ["prob", "log_prob", "kl"])
def test_hard_metrics_by_hand(measure):
    lm = ToyLM()
    ids = torch.tensor([1, 2, 3, 4])
    x = lm.emb(ids).detach()
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0])
    y = 3
    p = lm.probs_of(x)

    def change(q):
        if measure == "prob":
            return float(p[y] - q[y])
        if measure == "log_prob":
            return float(p[y].log() - q[y].log())
        return float((p * (p.log() - q.log())).sum())

    def erase(keep_idx, keep=True):
        m = torch.zeros(4, 1, dtype=torch.float64) if keep else torch.ones(4, 1, dtype=torch.float64)
        m[keep_idx] = 1.0 if keep else 0.0
        return lm.probs_of(x * m)

    # fractions 0.25 -> top {0}; 0.5 -> top {0, 2}
    comp = (change(erase([0], keep=False)) + change(erase([0, 2], keep=False))) / 2
    suff = (change(erase([0])) + change(erase([0, 2]))) / 2
    res = hard_faithfulness(lm, ids, y, scores, fractions=(0.25, 0.5), measure=measure)
    assert res.comprehensiveness == pytest.approx(comp, abs=1e-12)
    assert res.sufficiency == pytest.approx(suff, abs=1e-12)
    kw = dict(fractions=(0.25, 0.5), measure=measure)
    assert comprehensiveness(lm, ids, y, scores, **kw) == pytest.approx(comp, abs=1e-12)
    assert sufficiency(lm, ids, y, scores, **kw) == pytest.approx(suff, abs=1e-12)


def test_hard_metric_ties_break_by_position_and_bad_arguments():
    lm = ToyLM()
    ids = torch.tensor([1, 2, 3, 4])
    x = lm.emb(ids).detach()
    p = lm.probs_of(x)
    without0 = x.clone()
    without0[0] = 0
    res = hard_faithfulness(lm, ids, 1, torch.ones(4), fractions=(0.25,))
    assert res.comprehensiveness == pytest.approx(float(p[1] - lm.probs_of(without0)[1]), abs=1e-12)
    with pytest.raises(ValueError):
        hard_faithfulness(lm, ids, 1, torch.ones(4), measure="nope")
    with pytest.raises(ValueError):
        hard_faithfulness(lm, ids, 1, torch.ones(5))
    with pytest.raises(ValueError):
        soft_faithfulness(lm, ids, 1, torch.tensor([1.0, float("nan"), 0.0, 0.0]))


# ----------------------------------------------------------------------------- alignment
def test_dsa_hand_values():
    assert dsa(torch.tensor([1.0, 1.0, 2.0]), [2], [0]) == pytest.approx(0.5 - 0.25)
    assert dsa(torch.tensor([0.0, 3.0, 1.0, 0.0]), [1, 2], []) == pytest.approx(1.0)
    assert dsa(torch.zeros(3), [0], [1]) == 0.0
    assert dsa(torch.tensor([1.0, -1.0]), [0], [1]) == 0.0  # total not positive


def test_f1_alignment_hand_values():
    s = torch.tensor([5.0, 4.0, 3.0, 2.0])
    assert f1_alignment(s, [0, 2], top_k=2) == pytest.approx(0.5)
    assert f1_alignment(s, [0, 2], top_k=3) == pytest.approx(0.8)
    assert f1_alignment(s, [0, 1]) == pytest.approx(1.0)  # top_k defaults to |gold|
    assert f1_alignment(s, [3], top_k=1) == 0.0
    assert f1_alignment(s, []) == 0.0
