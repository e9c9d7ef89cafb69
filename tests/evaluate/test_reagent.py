"""ReAGent against hand computations on a toy model whose target depends on one token, and on tiny models."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from heta_fast import Attribution, HETAConfig
from heta_fast.engine import Attributor
from heta_fast.errors import ConfigError
from heta_fast.evaluate.baselines import ReagentOptions, reagent
from heta_fast.evaluate.baselines.reagent import auxiliary_tokens, reagent_row
from heta_fast.evaluate.methods import METHODS, SIGNED, resolve_methods, run_methods
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT = text(5, 9, 13, 20, 31, 7)
V = 6  # toy vocabulary (inputs and outputs)
J = 2  # the one position the toy model reads
IDS = torch.arange(V)  # the toy input: token i at position i
AUX = (IDS + 1) % V  # every position's replacement differs from its token


class OnePositionLM(nn.Module):
    """Next-token logits = W · x_J with one-hot embeddings and W[0] = 4·e_J: p(0) is high exactly
    when the token at position J is the original token J (otherwise every logit is 0)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, V).double()
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(V, dtype=torch.float64))
        self.W = torch.zeros(V, V, dtype=torch.float64)
        self.W[0, J] = 4.0

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, use_cache=False, logits_to_keep=0):
        return SimpleNamespace(logits=(inputs_embeds[:, J] @ self.W.T)[:, None])


def _row(options, target=0, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return reagent_row(OnePositionLM(), IDS, V, target, AUX, options, gen, max_batch=3)


def test_the_only_token_that_matters_ranks_first_with_the_hand_computed_scores():
    opts = ReagentOptions(replace_ratio=0.3, probes=4, max_steps=3, min_steps=3)  # no stopping check
    row = _row(opts)
    # by hand: p(0 | x) = e⁴ / (e⁴ + 5); with position J replaced every logit is 0: p = 1/6
    dp = torch.e ** 4 / (torch.e ** 4 + 5) - 1 / 6
    gen = torch.Generator().manual_seed(7)
    z = torch.zeros(V, dtype=torch.float64)
    for _ in range(3):  # the documented draws: u ~ U[0,1)^{probes × n}, R_b = the round(0.3·6) = 2 smallest
        u = torch.rand(4, V, generator=gen, dtype=torch.float64)
        for b in range(4):
            chosen = set(u[b].argsort()[:2].tolist())
            if J in chosen:  # Δp_b = dp when J is replaced, else 0
                z += torch.tensor([dp if i in chosen else -dp for i in range(V)], dtype=torch.float64)
    expected = torch.sigmoid(z) / torch.sigmoid(z).sum()
    torch.testing.assert_close(row.scores, expected)
    assert int(row.scores.argmax()) == J and float(z[J]) > 0
    assert (row.steps, row.stopped) == (3, False)


def test_stopping_condition():
    base = dict(replace_ratio=0.3, probes=4, max_steps=6, min_steps=2, keep_ratio=1 / V)
    # keeping the top token (J, after two steps) keeps the target 0 the model's top-1: stop at the first check
    row = _row(ReagentOptions(stop_top_k=1, **base))
    assert (row.steps, row.stopped) == (2, True)
    # keeping every token, target 1 is never the top-1 (p(0) > p(1)): every step runs ...
    row = _row(ReagentOptions(stop_top_k=1, **{**base, "keep_ratio": 1.0}), target=1)
    assert (row.steps, row.stopped) == (6, False)
    # ... but it is within the top-2 (p(1) ties with four others): stop at the first check
    row = _row(ReagentOptions(stop_top_k=2, **{**base, "keep_ratio": 1.0}), target=1)
    assert (row.steps, row.stopped) == (2, True)


def test_options_are_checked():
    for bad in (dict(replace_ratio=0.0), dict(keep_ratio=1.5), dict(probes=0), dict(min_steps=30),
                dict(stop_top_k=0)):
        with pytest.raises(ConfigError):
            ReagentOptions(**bad)


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1, max_batch=5, seed=3))


def test_auxiliary_tokens_are_the_left_context_argmax(attributor):
    banned = attributor.tokenizer.all_special_ids
    emb = attributor.model.get_input_embeddings()
    ids = torch.tensor(tiny_tokenizer()(text(5, 9))["input_ids"])
    with torch.no_grad():  # continue greedily: each later token is its left context's argmax, which must be skipped
        for _ in range(4):
            logits = attributor.model(inputs_embeds=emb(ids)[None]).logits[0, -1]
            logits[banned] = -torch.inf
            ids = torch.cat([ids, logits.argmax()[None]])
    aux = auxiliary_tokens(attributor.adapter, ids, banned)
    with torch.no_grad():  # independently: one forward per prefix
        rows = [attributor.model(inputs_embeds=emb(ids[:i])[None]).logits[0, -1].double().softmax(-1)
                for i in range(1, len(ids))]
    first = torch.stack(rows + [attributor.model(inputs_embeds=emb(ids)[None]).logits[0, -1].double().softmax(-1)])
    for i, dist in enumerate([first.mean(0)] + rows):
        dist = dist.clone()
        dist[list(banned) + [int(ids[i])]] = -1
        assert int(aux[i]) == int(dist.argmax()), i
    assert not (aux == ids).any() and not set(aux.tolist()) & set(banned)


def test_seeded_and_deterministic(attributor):
    target = text(40, 41)
    a = reagent(attributor, PROMPT, target)
    b = reagent(attributor, PROMPT, target, seed=3)  # the default seed is the engine's
    c = reagent(attributor, PROMPT, target, seed=4)
    assert torch.equal(a.scores, b.scores) and a.config["seed"] == 3
    assert not torch.equal(a.scores, c.scores)


def test_runs_through_run_methods(attributor):
    assert "reagent" in resolve_methods("all") and "reagent" in METHODS and "reagent" not in SIGNED
    out = run_methods(attributor, PROMPT, text(40, 41), "reagent")
    res = out["reagent"]
    assert isinstance(res, Attribution) and res.method == "reagent" and res.scores.shape == (2, 6)
    assert torch.isfinite(res.scores).all() and (res.scores > 0).all()
    torch.testing.assert_close(res.scores.sum(-1), torch.ones(2, dtype=torch.float64))
    assert len(res.config["steps"]) == 2 and res.config["auxiliary"].startswith("attributed model")
