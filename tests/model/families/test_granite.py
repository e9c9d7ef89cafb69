"""Granite: attention multiplier (the attention ``scaling``), residual multiplier (a constant gain
on what attention adds), embedding multiplier (inside the forward, on the input embeddings) and
logit scaling (the fused KL divides the logits as the model does)."""
import pytest
import torch

import heta_fast.signals.information.signal as information_signal
from heta_fast import Attributor, HETAConfig
from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.capture import CaptureRequest
from tests.model.families.checks import PROMPT, TARGET, assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import tiny_model, tiny_tokenizer


def test_granite_multipliers_are_read_where_the_model_applies_them():
    model = tiny_model("granite")
    adapter = assert_rebuilds(model)
    ids = torch.arange(4, 10)
    x = adapter.embed(ids)
    torch.testing.assert_close(x, model.model.embed_tokens.weight[ids])  # the raw rows: × 3 happens inside
    cap = adapter.capture(x, torch.tensor([5]), CaptureRequest(attention=True))
    assert [rec.scale for rec in cap.layers] == [0.3, 0.3]
    raw = adapter.spec.out_proj(adapter.spec.attention(adapter.layers[0]), adapter.layout)
    torch.testing.assert_close(adapter.out_proj(0), 0.5 * raw)
    assert adapter.logit_transform().scale == 0.25 and adapter.logit_transform().softcap is None
    with pytest.raises(UnsupportedArchitectureError, match="scales or soft-caps"):
        adapter.unembedding()


def test_granite_engine_equals_reference():
    assert_engine_matches_reference("granite")


def test_granite_is_refused_by_a_fused_kl_without_logit_scale(monkeypatch):
    def plain_kl(hidden, weight, ref_logp, target_index, bias=None, *, chunk_size=8192):
        raise AssertionError("must not run")

    monkeypatch.setattr(information_signal, "vocab_kl", plain_kl)
    attr = Attributor(tiny_model("granite"), tiny_tokenizer(), HETAConfig(components=("information",)))
    with pytest.raises(UnsupportedArchitectureError, match=r"granite.*logit_scale=0\.25"):
        attr.attribute(PROMPT, TARGET)
