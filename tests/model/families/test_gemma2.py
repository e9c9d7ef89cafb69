"""Gemma-2: attention logit soft-capping (eager, recording capture, packed passes, the flow
gate's recompute), final-logit soft-capping (the fused KL), alternating sliding/global layers,
a norm after attention (the gate takes its gain)."""
import pytest
import torch

import heta_fast.signals.flow.gate as flow_gate_module
import heta_fast.signals.information.signal as information_signal
from heta_fast import Attributor, HETAConfig
from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.capture import CaptureRequest
from heta_fast.signals.information.packing import can_pack
from tests.model.families.checks import (
    PROMPT,
    TARGET,
    assert_engine_matches_reference,
    assert_post_norm_linearisation,
    assert_rebuilds,
)
from tests.tiny_models import tiny_model, tiny_tokenizer

IDS = torch.arange(4, 13)


def _logits(model, attn):
    model.set_attn_implementation(attn)
    with torch.no_grad():
        return model(input_ids=IDS[None]).logits[0]


def test_heta_attention_soft_caps_as_transformers_eager_does():
    model = tiny_model("gemma2")
    # transformers' own eager attention, which caps (its softmax runs in float32: ~1e-7 apart)
    reference = _logits(model, "eager")
    adapter = ModelAdapter(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS[None]).logits[0], reference, rtol=1e-4, atol=2e-6)
        cap = adapter.capture(adapter.embed(IDS), torch.arange(9), CaptureRequest(attention=True))
        torch.testing.assert_close(cap.log_probs, torch.log_softmax(model(input_ids=IDS[None]).logits[0], -1),
                                   rtol=1e-10, atol=1e-12)
    assert [rec.softcap for rec in cap.layers] == [0.5, 0.5]
    uncapped = tiny_model("gemma2", attn_logit_softcapping=None)
    assert float((_logits(uncapped, "eager") - reference).abs().max()) > 1e-2  # the cap matters here


def test_gemma2_windows_alternate_and_attention_rebuilds():
    adapter = assert_rebuilds(tiny_model("gemma2"))
    assert [adapter.window(i) for i in range(2)] == [3, None]
    assert adapter.logit_transform().softcap == 2.0
    assert can_pack(adapter)  # the information term runs the packed (capped, per segment) passes


def test_gemma2_gate_takes_the_post_attention_norm_gain():
    assert_post_norm_linearisation("gemma2", lambda layer: 1 + layer.post_attention_layernorm.weight)


def test_gemma2_engine_equals_reference():
    assert_engine_matches_reference("gemma2")


def test_gemma2_is_refused_where_a_path_cannot_cap(monkeypatch):
    attr = Attributor(tiny_model("gemma2"), tiny_tokenizer(), HETAConfig(num_probes=2))

    def uncapped_flow_step(q, k, lse, scale, r, vn, window=None):
        raise AssertionError("must not run")

    def uncapped_kl(hidden, weight, ref_logp, target_index, bias=None, *, chunk_size=8192, logit_scale=1.0):
        raise AssertionError("must not run")

    with monkeypatch.context() as patch:
        patch.setattr(flow_gate_module, "flow_step", uncapped_flow_step)
        with pytest.raises(UnsupportedArchitectureError, match="softcap"):
            attr.attribute(PROMPT, TARGET, config=attr.config.replace(components=("flow",)))
    with monkeypatch.context() as patch:
        patch.setattr(information_signal, "vocab_kl", uncapped_kl)
        with pytest.raises(UnsupportedArchitectureError, match=r"gemma2.*softcap=2\.0"):
            attr.attribute(PROMPT, TARGET, config=attr.config.replace(components=("information",)))
