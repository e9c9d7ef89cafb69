"""The real default model (SmolLM2-135M-Instruct from its GGUF wheel): what must hold whatever
the model believes. Whether the attributions are good is measured by the evaluation, not here."""
import json

import pytest
import torch

from heta_fast import Attribution
from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET, main

pytestmark = pytest.mark.real_model


def test_model_is_the_documented_architecture(default_attributor):
    cfg = default_attributor.model.config
    layout = default_attributor.adapter.layout
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    assert (layout.num_heads, layout.num_kv_heads) == (9, 3)


def test_attribution_invariants_on_the_default_model(default_attributor):
    res = default_attributor.attribute(DEMO_PROMPT, DEMO_TARGET)
    n = len(default_attributor.tokenizer(DEMO_PROMPT)["input_ids"])
    assert res.scores.shape == (1, n) and res.target_tokens == [" leaves"]
    for comp in (res.scores, res.flow, res.curvature, res.information):
        assert torch.isfinite(comp).all() and (comp >= 0).all()
    torch.testing.assert_close(res.flow.sum(-1), torch.ones(1))
    torch.testing.assert_close(res.scores, res.flow * (0.5 * res.curvature + 0.5 * res.information))
    again = default_attributor.attribute(DEMO_PROMPT, DEMO_TARGET)
    assert torch.equal(res.scores, again.scores)


def test_cli_json_round_trips(default_attributor, tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["attribute", "--prompt", "The capital of France is", "--target", " Paris",
                 "--num-probes", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    res = Attribution.from_json(out)
    assert json.loads(out.read_text())["model"] == "smollm2-135m"
    assert res.target_tokens == [" Paris"] and res.scores.shape[1] == len(res.context_tokens) == 5
    assert res.topk(1)[0][1] in printed
