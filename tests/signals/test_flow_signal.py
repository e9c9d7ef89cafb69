"""The streaming flow gate (the capture pass + signals.flow) against the reference engine's M_T,
which rolls out materialised attention matrices, on tiny random models of every architecture
(GQA, a sliding window, a mix of sliding and full layers, GPT-J's float32 attention) and on
the default model; and the engine's default path keeps no attention matrix."""

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.capture import CaptureRequest
from heta_fast.ops.flow import attention_probs_reference
from heta_fast.reference import flow_gate_reference, value_norms_reference
from heta_fast.signals import SIGNALS
from heta_fast.signals.flow import flow_gate
from tests.tiny_models import ARCHITECTURES, text, tiny_model, tiny_tokenizer

IDS = torch.tensor([5, 9, 11, 3, 40, 22, 8, 17, 30, 12, 6])
# Three targets together, predicted at the last three positions (the prompt is 8 tokens).
POSITIONS, N_CTX = torch.tensor([7, 9, 10]), 8
# Qwen2 with a window of 3 on its second layer only: two masks in one forward pass.
MIXED = dict(use_sliding_window=True, sliding_window=3, layer_types=["full_attention", "sliding_attention"])
MODELS = [(arch, {}) for arch in ARCHITECTURES] + [("qwen2", MIXED)]


def _flow_capture(adapter, x, positions):
    """The capture pass with what the flow signal asks for."""
    return adapter.capture(x, positions, SIGNALS["flow"].capture_request(adapter, HETAConfig()))


def _reference_gate(adapter, x, positions, n_ctx):
    cap = adapter.capture_matrices(x)
    norms = [value_norms_reference(v, w) for v, w in zip(cap.values, cap.out_proj)]
    return cap, flow_gate_reference(cap.attentions, norms, positions, n_ctx)


@pytest.mark.parametrize("arch,overrides", MODELS, ids=[a + ("-mixed" if o else "") for a, o in MODELS])
def test_streaming_gate_equals_reference_float64(arch, overrides):
    adapter = ModelAdapter(tiny_model(arch, **overrides))
    x = adapter.embed(IDS)
    ref_cap, want = _reference_gate(adapter, x, POSITIONS, N_CTX)
    cap = _flow_capture(adapter, x, POSITIONS)
    got = flow_gate(cap, POSITIONS, N_CTX)
    assert got.dtype == torch.float64 and got.shape == (3, N_CTX)
    # GPT-J's attention scores are float32 in both passes (its own code, our fused kernel).
    tol = dict(rtol=1e-6, atol=1e-8) if arch == "gptj" else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, dtype=torch.float64))
    # The same single forward pass gives the targets' original log-probabilities.
    torch.testing.assert_close(cap.log_probs, ref_cap.log_probs[POSITIONS], **tol)


@pytest.mark.parametrize("arch,overrides", MODELS, ids=[a + ("-mixed" if o else "") for a, o in MODELS])
def test_records_rebuild_the_models_attention_probabilities(arch, overrides):
    adapter = ModelAdapter(tiny_model(arch, **overrides))
    x = adapter.embed(IDS)
    ref = adapter.capture_matrices(x)
    cap = _flow_capture(adapter, x, POSITIONS)
    windows = [adapter.spec.window(adapter.model.config, i) for i in range(len(adapter.layers))]
    if overrides:
        assert windows == [None, 3]
    if arch == "mistral":
        assert windows == [3, 3]
    tol = dict(rtol=1e-5, atol=1e-7) if arch == "gptj" else dict(rtol=1e-10, atol=1e-12)
    for layer_index, rec in enumerate(cap.layers):
        layout = adapter.layout
        assert rec.q.shape == (layout.num_heads, len(IDS), layout.head_dim)
        assert rec.k.shape == (layout.num_kv_heads, len(IDS), layout.head_dim)
        assert cap.windows[layer_index] == windows[layer_index]
        probs = attention_probs_reference(rec.q.double(), rec.k.double(), rec.scale, windows[layer_index])
        torch.testing.assert_close(probs, ref.attentions[layer_index], **tol)
        # The recorded lse is the normaliser of exactly those probabilities.
        s = rec.scale * rec.q.double() @ rec.k.double().repeat_interleave(layout.group_size, 0).transpose(-1, -2)
        i = torch.arange(len(IDS))
        ok = i[None] <= i[:, None]
        if windows[layer_index] is not None:
            ok &= i[None] > i[:, None] - windows[layer_index]
        lse = torch.logsumexp(s.masked_fill(~ok, float("-inf")), -1)
        torch.testing.assert_close(rec.lse.double(), lse, **tol)
        # Value norms of the values the model used (bias included), reduced during the pass.
        want_norms = value_norms_reference(ref.values[layer_index], ref.out_proj[layer_index])
        torch.testing.assert_close(rec.values, want_norms, **tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, dict(rtol=1e-4, atol=1e-6)),
                                       (torch.float16, dict(rtol=0, atol=5e-3))])
def test_streaming_gate_in_lower_precision(dtype, tol):
    adapter = ModelAdapter(tiny_model("llama", dtype=dtype))
    x = adapter.embed(IDS)
    ref_adapter = ModelAdapter(tiny_model("llama", dtype=torch.float64))
    _, want = _reference_gate(ref_adapter, ref_adapter.embed(IDS), POSITIONS, N_CTX)
    got = flow_gate(_flow_capture(adapter, x, POSITIONS), POSITIONS, N_CTX)
    assert got.dtype == torch.float32  # accumulated in float32 whatever the model dtype
    torch.testing.assert_close(got, want.float(), **tol)


def test_capture_without_recording_keeps_only_log_probs():
    adapter = ModelAdapter(tiny_model("mistral"))
    x = adapter.embed(IDS)
    bare = adapter.capture(x, POSITIONS, CaptureRequest())
    assert bare.layers == []
    torch.testing.assert_close(bare.log_probs, _flow_capture(adapter, x, POSITIONS).log_probs, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(bare.log_probs, adapter.log_probs(x[None], POSITIONS)[0], rtol=1e-12, atol=1e-13)


def test_architecture_bypassing_the_attention_path_is_a_clear_error():
    # A layer whose attention never reaches heta-fast's attention function (as GPT-J's own
    # ``_attn`` did before transformers routed it through the attention interface).
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    attn = adapter.spec.attention(adapter.layers[1])
    attn.forward = lambda hidden_states, *args, **kwargs: (torch.zeros_like(hidden_states), None)
    with pytest.raises(UnsupportedArchitectureError, match=r"layers \[1\].*attention interface"):
        _flow_capture(adapter, adapter.embed(IDS), POSITIONS)


def test_engine_default_path_materialises_no_attention(monkeypatch):
    attr = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=2))

    def forbidden(*args, **kwargs):
        raise AssertionError("the engine called the materialising capture")

    monkeypatch.setattr(attr.adapter, "capture_matrices", forbidden)
    weights = []
    hooks = [attr.adapter.spec.attention(layer).register_forward_hook(lambda m, a, out: weights.append(out[1]))
             for layer in attr.adapter.layers]
    try:
        res = attr.attribute(text(10, 3, 44, 7, 21, 9), text(30, 12))
    finally:
        for h in hooks:
            h.remove()
    assert res.flow.shape == (2, 6)
    # The first two attention calls are the capture's (two layers): no weights came back.
    assert weights[:2] == [None, None]


@pytest.mark.real_model
def test_default_model_streaming_gate_equals_reference(default_attributor):
    adapter = default_attributor.adapter
    ids = torch.tensor(default_attributor.tokenizer("The quick brown fox jumps over the lazy dog because it was "
                                                    "bored of waiting for the rain to stop")["input_ids"])
    positions = torch.tensor([len(ids) - 3, len(ids) - 1])
    n_ctx = len(ids) - 3
    x = adapter.embed(ids)
    _, want = _reference_gate(adapter, x, positions, n_ctx)
    got = flow_gate(_flow_capture(adapter, x, positions), positions, n_ctx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.real_model
def test_default_model_attribution_flow_equals_reference(default_attributor):
    res = Attributor(default_attributor.model, default_attributor.tokenizer,
                     HETAConfig(components=("flow",))).attribute("The capital of France is", " Paris")
    adapter = default_attributor.adapter
    ids = torch.tensor(res.context_ids + res.target_ids[:-1])
    n_ctx = len(res.context_ids)
    _, want = _reference_gate(adapter, adapter.embed(ids), torch.tensor([n_ctx - 1]), n_ctx)
    torch.testing.assert_close(res.flow, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.scores, res.flow)
