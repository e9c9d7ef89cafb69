"""Gemma-3: q/k norms, a sliding-window pattern, post-attention norms; the text model alone
(Gemma3ForCausalLM) and inside the multimodal class the 4B+ checkpoints load as
(Gemma3ForConditionalGeneration: layers under model.language_model, sizes in config.text_config)."""
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.reference import flow_gate_reference, value_norms_reference
from heta_fast.signals.flow import FlowSignal, flow_gate
from tests.model.families.checks import (
    assert_engine_matches_reference,
    assert_heads,
    assert_post_norm_linearisation,
    assert_rebuilds,
)
from tests.tiny_models import tiny_model, tiny_tokenizer


def test_gemma3_text_model():
    model = tiny_model("gemma3_text")
    assert hasattr(model.model.layers[0].self_attn, "q_norm")
    adapter = assert_rebuilds(model)
    assert adapter.spec.name == "gemma3_text" and [adapter.window(i) for i in range(2)] == [3, None]
    assert_post_norm_linearisation("gemma3_text", lambda layer: 1 + layer.post_attention_layernorm.weight)


def test_gemma3_text_engine_equals_reference():
    assert_engine_matches_reference("gemma3_text")


def test_gemma3_multimodal_class_reads_its_language_model():
    model = tiny_model("gemma3")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration" and not hasattr(model.config, "hidden_size")
    adapter = assert_rebuilds(model)
    assert adapter.spec.name == "gemma3" and adapter.layers[0] is model.model.language_model.layers[0]
    assert [adapter.window(i) for i in range(2)] == [3, None]
    assert_heads("gemma3")
    # The streamed flow gate against the materialised reference, through the multimodal class.
    x = adapter.embed(torch.arange(4, 12))
    positions, n_ctx = torch.tensor([6, 7]), 7
    signal = FlowSignal()
    capture = adapter.capture(x, positions, signal.capture_request(adapter, HETAConfig()))
    cap = adapter.capture_matrices(x)
    norms = [value_norms_reference(v, w, g) for v, w, g in zip(cap.values, cap.out_proj, cap.post_gain)]
    torch.testing.assert_close(flow_gate(capture, positions, n_ctx),
                               flow_gate_reference(cap.attentions, norms, positions, n_ctx))


def test_gemma3_multimodal_class_runs_through_the_attributor():
    """The Attributor reads sizes (vocabulary, maximum length) from the text config: the 4B+
    checkpoints' class attributes text like the text model, and generates."""
    assert_engine_matches_reference("gemma3")
    attr = Attributor(tiny_model("gemma3"), tiny_tokenizer(), HETAConfig(components=("flow",)))
    assert attr.adapter.vocab_size == attr.model.config.text_config.vocab_size
    assert attr.adapter.max_length == attr.model.config.text_config.max_position_embeddings
    res = attr.generate_and_attribute(torch.arange(4, 10), max_new_tokens=2)
    assert len(res.target_ids) == 2 and torch.isfinite(res.scores).all()
    assert (res.architecture, res.model_dtype, res.device) == ("Gemma3ForConditionalGeneration", "float64", "cpu")
