"""Attention sinks (HETAConfig.sinks / sink_threshold, docs/method.md §1): the received share the
streamed rollout derives equals the materialised reference; excluded sinks get no gate mass;
special tokens are sinks; every result reports them."""
import pytest
import torch

from heta_fast import Attributor, ConfigError, HETAConfig
from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import flow_gate_reference, received_share_reference, value_norms_reference
from heta_fast.signals import SIGNALS
from heta_fast.signals.flow import sink_positions, stream_rollout, to_simplex
from tests.tiny_models import text, tiny_model, tiny_tokenizer

IDS = torch.arange(4, 14)
POSITIONS, N_CTX = torch.tensor([7, 8, 9]), 8


def _capture(adapter, x):
    return adapter.capture(x, POSITIONS, SIGNALS["flow"].capture_request(adapter, HETAConfig()))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral"])
def test_received_share_equals_the_materialised_rollout(arch):
    adapter = ModelAdapter(tiny_model(arch))
    x = adapter.embed(IDS)
    rollout = stream_rollout(_capture(adapter, x), POSITIONS)
    want = received_share_reference(adapter.capture_matrices(x).attentions, POSITIONS)
    torch.testing.assert_close(rollout.received, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rollout.received.sum(-1), torch.ones(3, dtype=torch.float64))


def test_excluded_sinks_get_no_gate_mass_and_the_rest_is_renormalised():
    """Engine (sinks="exclude") == the materialised reference gate with the sink columns zeroed and
    each row renormalised; the sinks are the special token and the most-attended position."""
    att = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(components=("flow",)))
    ids = IDS.clone()
    ids[3] = 2  # [BOS]: a special token
    context, target = ids[:N_CTX], ids[N_CTX:]  # 8 context tokens, 2 targets predicted at 7 and 8
    positions = torch.tensor([7, 8])
    x = att.adapter.embed(ids[:-1])
    rollout = stream_rollout(att.adapter.capture(x, positions, SIGNALS["flow"].capture_request(att.adapter,
                                                                                              att.config)), positions)
    top = int(rollout.received[:, :N_CTX].amax(0).argmax())
    threshold = float(rollout.received[:, top].max()) * 0.99
    config = att.config.replace(sinks="exclude", sink_threshold=threshold)
    res = att.attribute(context, target, config=config)
    want_sinks = torch.zeros(N_CTX, dtype=torch.bool)
    want_sinks[[3, top]] = True
    assert res.sinks == want_sinks.tolist() and res.special[3]
    cap = att.adapter.capture_matrices(x)
    norms = [value_norms_reference(v, w, g) for v, w, g in zip(cap.values, cap.out_proj, cap.post_gain)]
    paper = flow_gate_reference(cap.attentions, norms, positions, N_CTX)
    torch.testing.assert_close(res.flow, to_simplex(paper.masked_fill(want_sinks, 0.0)), rtol=1e-12, atol=1e-14)
    kept = att.attribute(context, target, config=config.replace(sinks="keep"))
    assert kept.sinks == res.sinks  # reported either way
    torch.testing.assert_close(kept.flow, paper, rtol=1e-12, atol=1e-14)
    assert sink_positions(rollout, N_CTX, None, threshold).tolist() == (torch.arange(N_CTX) == top).tolist()


def test_sink_options_are_validated():
    with pytest.raises(ConfigError, match="sinks"):
        HETAConfig(sinks="drop")
    with pytest.raises(ConfigError, match="sink_threshold"):
        HETAConfig(sink_threshold=0.0)


@pytest.mark.real_model
def test_default_model_first_position_is_a_sink(default_attributor):
    """On the demo prompt the first position receives most of the rollout's attention (0.96 on
    average over layers, measured): it is reported, and excluded on request."""
    from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET

    config = HETAConfig(components=("flow",))
    kept = default_attributor.attribute(DEMO_PROMPT, DEMO_TARGET, config=config)
    assert kept.sinks[0] and sum(kept.sinks) == 1 and kept.topk(1)[0][0] == 0
    gone = default_attributor.attribute(DEMO_PROMPT, DEMO_TARGET, config=config.replace(sinks="exclude"))
    assert gone.flow[0, 0] == 0 and gone.topk(1)[0][0] != 0
    assert torch.allclose(gone.flow[0, 1:], kept.flow[0, 1:] / kept.flow[0, 1:].sum(), rtol=1e-5)


def test_a_sink_token_is_put_before_the_context_and_is_a_sink():
    att = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1))
    tok = att.tokenizer
    prompt, target = text(5, 9, 13, 20), text(40)
    with_bos = att.attribute(prompt, target, config=att.config.replace(sink_token="bos"))
    assert with_bos.context_ids == [tok.bos_token_id] + tok(prompt)["input_ids"]
    assert with_bos.special[0] and not any(with_bos.special[1:]) and with_bos.sinks[0]
    # the same numbers as the ids given with the token in front
    direct = att.attribute([tok.bos_token_id] + tok(prompt)["input_ids"], target)
    torch.testing.assert_close(with_bos.scores, direct.scores)
    with_eos = att.attribute(prompt, target, config=att.config.replace(sink_token="eos"))
    assert with_eos.context_ids[0] == tok.eos_token_id
    # a context that starts with a special token has its sink already: nothing is added
    again = att.attribute([tok.bos_token_id] + tok(prompt)["input_ids"], target,
                          config=att.config.replace(sink_token="eos"))
    assert again.context_ids == direct.context_ids
    assert att.attribute(prompt, target).context_ids == tok(prompt)["input_ids"]  # "none", the default


def test_a_sink_token_the_tokenizer_lacks_is_a_config_error_before_any_work():
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer()
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="[PAD]", unk_token="[UNK]")
    att = Attributor(tiny_model("llama"), bare, HETAConfig(num_probes=1))
    with pytest.raises(ConfigError, match="sink_token='bos' but the tokenizer has no BOS token"):
        att.attribute(text(5, 9), text(40), config=att.config.replace(sink_token="bos"))
    with pytest.raises(ConfigError, match="sink_token"):
        HETAConfig(sink_token="pad")


def test_eval_spans_follow_the_sink_token():
    from heta_fast.evaluate.data import EvalExample
    from heta_fast.evaluate.runner import prepare_example

    prompt = text(5, 6, 7, 8, 9, 10)
    ex = EvalExample(id="a", prompt=prompt, target=text(13), support=(prompt.index("w8"), len(prompt)),
                     distractor=(0, prompt.index("w7") + 2), gold=((prompt.index("w9"), prompt.index("w9") + 2),))
    att = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1))
    plain = prepare_example(att, ex)
    sunk = prepare_example(Attributor(att.model, att.tokenizer, att.config.replace(sink_token="bos")), ex)
    assert sunk.context_ids.tolist() == [att.tokenizer.bos_token_id] + plain.context_ids.tolist()
    assert plain.gold == [4] and sunk.gold == [5]
    assert sunk.support == [i + 1 for i in plain.support] and sunk.distractor == [i + 1 for i in plain.distractor]
