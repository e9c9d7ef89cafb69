"""Attention options: logit soft-capping in every heta attention path that computes scores, and
refusal of any option an attention function does not implement (never dropped silently)."""
import types

import pytest
import torch

from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.attention.eager import heta_eager_attention
from heta_fast.model.attention.packed import PackedSegments, packed_attention
from heta_fast.model.attention.pass_state import pass_state
from heta_fast.model.attention.recording import AttentionRecorder, attention_with_lse, recording_attention

CAP = 0.7


def _inputs(n=9, heads=4, kv=2, dh=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, n, dh, generator=g, dtype=torch.float64) * 2 for h in (heads, kv, kv)]


def _capped_reference(q, k, v, scale, window=None):
    """Plain softmax attention over c·tanh(scale·q·k / c), causal (optionally windowed)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = scale * q @ k.transpose(-1, -2)
    s = CAP * torch.tanh(s / CAP)
    n = q.shape[2]
    i = torch.arange(n)
    visible = i[None, :] <= i[:, None]
    if window is not None:
        visible &= i[:, None] - i[None, :] < window
    s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def _module(layer_idx=0):
    return types.SimpleNamespace(training=False, layer_idx=layer_idx)


def _causal_mask(n):
    i = torch.arange(n)
    return torch.zeros(n, n, dtype=torch.float64).masked_fill(i[None, :] > i[:, None], -1e300)[None, None]


def test_eager_attention_soft_caps_before_the_mask():
    q, k, v = _inputs()
    out, probs = heta_eager_attention(_module(), q, k, v, _causal_mask(9), scaling=0.5, softcap=CAP)
    want, _ = _capped_reference(q, k, v, 0.5)
    torch.testing.assert_close(out.transpose(1, 2), want)
    plain, _ = heta_eager_attention(_module(), q, k, v, _causal_mask(9), scaling=0.5)
    assert not torch.allclose(plain, out, atol=1e-3)


def test_recording_attention_soft_caps_and_records_the_cap():
    q, k, v = _inputs()
    out, lse = attention_with_lse(q, k, v, None, 0.5, causal=True, softcap=CAP)
    want, want_lse = _capped_reference(q, k, v, 0.5)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(lse, want_lse)
    recorder = AttentionRecorder({id(module := _module()): 0}, attention=True)
    with torch.no_grad(), pass_state(recorder):
        out, _ = recording_attention(module, q, k, v, _causal_mask(9), scaling=0.5, softcap=CAP)
    torch.testing.assert_close(out.transpose(1, 2), want)
    assert recorder.records[0].softcap == CAP
    torch.testing.assert_close(recorder.records[0].lse, want_lse[0])


def test_packed_attention_soft_caps_segment_by_segment():
    q, k, v = _inputs(n=6)
    # One segment covering positions 0..5 with no prefix: plain causal attention over 6 tokens.
    layout = PackedSegments(positions=torch.arange(6), offsets=torch.tensor([0]), lengths=torch.tensor([6]),
                            start=0, prefix=0, windows=[3])
    with pass_state(layout):
        out, _ = packed_attention(_module(), q, k, v, None, scaling=0.5, softcap=CAP, sliding_window=3)
    want, _ = _capped_reference(q, k, v, 0.5, window=3)
    torch.testing.assert_close(out.transpose(1, 2), want)
    with pass_state(layout), pytest.raises(UnsupportedArchitectureError, match="sliding window of 5.*declares 3"):
        packed_attention(_module(), q, k, v, None, scaling=0.5, sliding_window=5)


@pytest.mark.parametrize("option", [{"s_aux": torch.zeros(4)}, {"attention_chunk_size": 8}, {"is_causal": False}])
def test_every_attention_function_refuses_an_option_it_does_not_implement(option):
    q, k, v = _inputs()
    name = next(iter(option))
    with pytest.raises(UnsupportedArchitectureError, match=f"layer 0.*{name}=.*heta_eager"):
        heta_eager_attention(_module(), q, k, v, _causal_mask(9), **option)
    recorder = AttentionRecorder({id(module := _module()): 0})
    with torch.no_grad(), pass_state(recorder), pytest.raises(UnsupportedArchitectureError, match="heta_recording"):
        recording_attention(module, q, k, v, _causal_mask(9), **option)
    layout = PackedSegments(positions=torch.arange(9), offsets=torch.tensor([0]), lengths=torch.tensor([9]),
                            start=0, prefix=0)
    with pass_state(layout), pytest.raises(UnsupportedArchitectureError, match="heta_packed"):
        packed_attention(_module(), q, k, v, None, **option)


def test_options_without_a_value_and_bookkeeping_pass():
    q, k, v = _inputs()
    heta_eager_attention(_module(), q, k, v, _causal_mask(9), s_aux=None, softcap=None, sliding_window=None,
                         position_ids=torch.arange(9), is_causal=True, cu_seq_lens_q=None)


def test_the_capture_checks_the_modules_window_against_the_map():
    q, k, v = _inputs()
    recorder = AttentionRecorder({id(module := _module()): 0}, windows=[4])
    with torch.no_grad(), pass_state(recorder), pytest.raises(UnsupportedArchitectureError, match="window of 3"):
        recording_attention(module, q, k, v, _causal_mask(9), sliding_window=3)


@pytest.mark.parametrize("passed, declared", [(None, 4), (4, None), (3, 4)])
def test_a_window_the_module_does_not_pass_is_refused_both_ways(passed, declared):
    """A map declaring a window the module does not pass (longer than the pass, so the mask shows
    nothing) is refused, as is a module's window the map leaves out; the message names both."""
    q, k, v = _inputs()
    shown = "no sliding window" if passed is None else f"a sliding window of {passed}"
    match = f"layer 0: .*applies {shown}.*declares {declared or 'none'}"
    recorder = AttentionRecorder({id(module := _module()): 0}, windows=[declared])
    with torch.no_grad(), pass_state(recorder), pytest.raises(UnsupportedArchitectureError, match=match):
        recording_attention(module, q, k, v, _causal_mask(9), sliding_window=passed)
    layout = PackedSegments(positions=torch.arange(9), offsets=torch.tensor([0]), lengths=torch.tensor([9]),
                            start=0, prefix=0, windows=[declared])
    with pass_state(layout), pytest.raises(UnsupportedArchitectureError, match=match):
        packed_attention(_module(), q, k, v, None, sliding_window=passed)


def test_the_capture_checks_the_window_its_mask_applies():
    """A module that passes no window but masks by one: the mask is what the pass computes, so a
    map without that window is refused, and the map with it is accepted."""
    q, k, v = _inputs()
    windowed = _causal_mask(9) + torch.where(torch.ones(9, 9, dtype=torch.bool).tril(-4), float("-inf"), 0.0)
    recorder = AttentionRecorder({id(module := _module()): 0}, windows=[None])
    with torch.no_grad(), pass_state(recorder), pytest.raises(UnsupportedArchitectureError, match="mask"):
        recording_attention(module, q, k, v, windowed)
    recorder = AttentionRecorder({id(module): 0}, windows=[4])
    with torch.no_grad(), pass_state(recorder), pytest.raises(UnsupportedArchitectureError, match="declares 4"):
        recording_attention(module, q, k, v, windowed)  # passes none: refused whatever the mask shows
