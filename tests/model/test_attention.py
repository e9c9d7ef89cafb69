"""The capture pass's recording attention (heta_fast/model/attention/recording.py) against heta's
eager attention: outputs, the row log-sum-exp, GQA, causal/windowed masks, and the recorder."""
import pytest
import torch

from heta_fast.model.attention.eager import heta_eager_attention
from heta_fast.model.attention.pass_state import pass_state
from heta_fast.model.attention.recording import (
    AttentionRecorder,
    _attention_with_lse_tiled,
    attention_with_lse,
    is_plain_causal,
    recording_attention,
)


def _inputs(n=11, heads=6, kv=2, dh=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, dh, generator=g, dtype=dtype)
    k = torch.randn(1, kv, n, dh, generator=g, dtype=dtype)
    v = torch.randn(1, kv, n, dh, generator=g, dtype=dtype)
    return q, k, v


def _additive_mask(n, window=None, dtype=torch.float64):
    i = torch.arange(n)
    ok = i[None, :] <= i[:, None]
    if window is not None:
        ok &= i[None, :] > i[:, None] - window
    return torch.zeros(n, n, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)[None, None]


def _plain(q, k, v, mask, scale):
    rep = q.shape[1] // k.shape[1]
    s = scale * q @ k.repeat_interleave(rep, 1).transpose(-1, -2) + mask
    return torch.softmax(s, -1) @ v.repeat_interleave(rep, 1), torch.logsumexp(s, -1)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("impl", ["dispatch", "tiled"])
def test_fused_attention_returns_output_and_lse_of_plain_softmax(window, impl):
    q, k, v = _inputs()
    mask = _additive_mask(11, window)
    want_out, want_lse = _plain(q, k, v, mask, 0.3)
    causal = window is None
    if impl == "dispatch":
        out, lse = attention_with_lse(q, k, v, None if causal else mask, 0.3, causal=causal)
    else:  # the path for devices without a fused kernel; tiny tiles to cross tile borders
        out, lse = _attention_with_lse_tiled(q, k, v, None if causal else mask, 0.3, causal, block=4)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_float32_scores_with_float64_values_keep_the_value_dtype_out():
    q, k, v = _inputs()
    out, lse = attention_with_lse(q.float(), k.float(), v, _additive_mask(11), 0.3)
    want, want_lse = _plain(q, k, v, _additive_mask(11), 0.3)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)


def test_plain_causal_detection():
    assert is_plain_causal(_additive_mask(9))
    assert not is_plain_causal(_additive_mask(9, window=3))
    assert is_plain_causal(_additive_mask(9, window=9))  # a window as long as the input hides nothing
    padded = _additive_mask(9).clone()
    padded[..., 0] = torch.finfo(torch.float64).min  # a padded first token
    assert not is_plain_causal(padded)
    assert is_plain_causal(torch.ones(9, 9, dtype=torch.bool).tril()[None, None])
    assert not is_plain_causal(None)


def test_recording_attention_records_what_rebuilds_the_eager_probabilities():
    q, k, v = _inputs()
    module = torch.nn.Module().eval()
    mask = _additive_mask(11, window=4)
    want_out, want_probs = heta_eager_attention(module, q, k, v, mask, 0.3)
    rec = AttentionRecorder({id(module): 5}, attention=True, reduce_values=lambda layer, values: values.clone())
    with torch.no_grad(), pass_state(rec):
        out, probs = recording_attention(module, q, k, v, mask, 0.3)
    assert probs is None and set(rec.records) == {5}
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    r = rec.records[5]
    assert r.q.shape == (6, 11, 8) and r.k.shape == (2, 11, 8) and r.scale == 0.3
    torch.testing.assert_close(r.values, v[0], rtol=0, atol=0)
    # The record rebuilds the probabilities the eager path returned.
    s = 0.3 * r.q @ r.k.repeat_interleave(3, 0).transpose(-1, -2) + mask[0]
    torch.testing.assert_close(torch.exp(s - r.lse[..., None]), want_probs[0], rtol=1e-12, atol=1e-12)


def test_recording_refuses_autograd_unknown_modules_and_a_missing_recorder():
    q, k, v = _inputs()
    with pytest.raises(RuntimeError, match="no_grad"), pass_state(AttentionRecorder({})):
        recording_attention(torch.nn.Module(), q, k, v, _additive_mask(11), 0.3)
    with torch.no_grad(), pass_state(AttentionRecorder({})):
        with pytest.raises(RuntimeError, match="module map"):
            recording_attention(torch.nn.Module(), q, k, v, _additive_mask(11), 0.3)
    with torch.no_grad(), pytest.raises(RuntimeError, match="heta_recording attention ran outside"):
        recording_attention(torch.nn.Module(), q, k, v, _additive_mask(11), 0.3)


def test_recorder_keeps_only_what_was_asked_for():
    q, k, v = _inputs()
    module = torch.nn.Module().eval()
    rec = AttentionRecorder({id(module): 0}, reduce_values=lambda layer, values: values.abs().sum(-1))
    with torch.no_grad(), pass_state(rec):
        recording_attention(module, q, k, v, _additive_mask(11), 0.3)
    torch.testing.assert_close(rec.records[0].values, v[0].abs().sum(-1))
    assert rec.records[0].q is None and rec.records[0].lse is None  # attention not asked for
    bare = AttentionRecorder({id(module): 0})
    with torch.no_grad(), pass_state(bare):
        recording_attention(module, q, k, v, _additive_mask(11), 0.3)
    assert bare.records == {} and bare.seen == {0}
