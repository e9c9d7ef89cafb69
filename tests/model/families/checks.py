"""The checks every family module runs on its tiny model.

- :func:`assert_rebuilds`: every attention module's real output rebuilt from the captured
  probabilities, values (bias included), per-head W_O, the output bias and the GQA head mapping,
  written out here rather than taken from the package;
- :func:`assert_engine_matches_reference`: the Attributor (streamed flow gate, batched exact
  curvature, packed information passes) against ``heta_fast.reference`` on flow, curvature and
  information, in float64;
- :func:`assert_heads`: the head layout read from the config.
"""
from __future__ import annotations

import contextlib

import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import attribute_reference
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT = text(10, 3, 44, 7, 21, 9)
TARGET = text(30, 12)


def _output_bias(attn):
    for name in ("o_proj", "c_proj", "out_proj", "dense"):
        mod = getattr(attn, name, None)
        if mod is not None:
            return mod.bias
    raise AssertionError("no output projection found")


@contextlib.contextmanager
def outputs_of(modules):
    """Collects each module's output (the first of a tuple, batch row 0) by index: {i: [n, d]}."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(
        i, (out[0] if isinstance(out, tuple) else out)[0])) for i, m in enumerate(modules)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def assert_rebuilds(model, n: int = 9, rtol: float = 1e-10) -> ModelAdapter:
    """Σ_h A_h v_{h // group} W_O^h + b_O equals each attention module's output [n, d]."""
    adapter = ModelAdapter(model)
    embeds = adapter.embed(torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(1)))
    with outputs_of([adapter.spec.attention(layer) for layer in adapter.layers]) as outputs:
        cap = adapter.capture_matrices(embeds)
    lay = adapter.layout
    for index, layer in enumerate(adapter.layers):
        a, v, w = cap.attentions[index], cap.values[index], cap.out_proj[index]
        assert a.shape == (lay.num_heads, n, n)
        assert v.shape == (lay.num_kv_heads, n, lay.head_dim)
        assert w.shape == (lay.num_heads, lay.head_dim, lay.d_model)
        rebuilt = torch.zeros(n, lay.d_model, dtype=torch.float64)
        for h in range(lay.num_heads):
            rebuilt += a[h] @ v[h // (lay.num_heads // lay.num_kv_heads)] @ w[h]
        bias = _output_bias(adapter.spec.attention(layer))
        if bias is not None:
            rebuilt += bias
        torch.testing.assert_close(rebuilt, outputs[index], rtol=rtol, atol=rtol)
    return adapter


def assert_engine_matches_reference(arch: str, tol: float = 1e-6, **overrides) -> None:
    """Engine == reference on every component (float64, exact estimator, small batches)."""
    attr = Attributor(tiny_model(arch, **overrides), tiny_tokenizer(),
                      HETAConfig(num_probes=2, estimator="exact", max_batch=4))
    res = attr.attribute(PROMPT, TARGET)
    ids = torch.tensor(res.context_ids + res.target_ids[:-1])
    n_ctx = len(res.context_ids)
    x = attr.adapter.embed(ids)
    positions = torch.arange(len(res.target_ids)) + n_ctx - 1
    ref = attribute_reference(attr.adapter, x, positions, torch.tensor(res.target_ids), n_ctx,
                              torch.zeros(n_ctx, x.shape[-1], dtype=x.dtype), num_probes=2, seed=0)
    torch.testing.assert_close(res.flow, ref["flow"])
    for name in ("curvature", "information", "scores"):
        torch.testing.assert_close(getattr(res, name), ref[name], rtol=tol, atol=1e-9)
    for name in ("flow", "curvature", "information"):
        assert torch.all(getattr(res, name) >= 0) and float(getattr(res, name).max()) > 0


def assert_heads(arch: str, num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 4) -> None:
    lay = ModelAdapter(tiny_model(arch)).layout
    assert (lay.num_heads, lay.num_kv_heads, lay.head_dim, lay.d_model) == (num_heads, num_kv_heads, head_dim, 16)


def assert_post_norm_linearisation(arch: str, gain_of) -> None:
    """A post-attention RMSNorm: its output at position j is (1/rms_j) Σ_h A_h v W_O^h ⊙ g, with
    g = ``gain_of(layer)`` written out here, so the gate's per-head projection W_O^h ⊙ g
    (``adapter.out_proj``) is the head's contribution up to one scalar per query position; and the
    gain changes the value norms of the tiny model (the test would see it dropped)."""
    adapter = ModelAdapter(tiny_model(arch))
    n = 7
    x = adapter.embed(torch.arange(4, 4 + n))
    with outputs_of([layer.post_attention_layernorm for layer in adapter.layers]) as normed:
        cap = adapter.capture_matrices(x)
    lay = adapter.layout
    for index, layer in enumerate(adapter.layers):
        raw = adapter.spec.out_proj(adapter.spec.attention(layer), lay)
        gain = gain_of(layer)
        torch.testing.assert_close(adapter.out_proj(index), raw * gain)
        assert not torch.allclose(adapter.out_proj(index), raw, rtol=1e-3)
        a, v = cap.attentions[index], cap.values[index]
        contribution = sum(a[h] @ v[h // lay.group_size] @ adapter.out_proj(index)[h] for h in range(lay.num_heads))
        out = cap.outputs[index]
        eps = layer.post_attention_layernorm.variance_epsilon if hasattr(
            layer.post_attention_layernorm, "variance_epsilon") else layer.post_attention_layernorm.eps
        rms = (out.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        torch.testing.assert_close(normed[index], contribution / rms, rtol=1e-6, atol=1e-9)
