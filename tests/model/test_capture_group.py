"""The capture pass of several sequences at once (heta_fast/model/capture_group.py): every field of
every sequence's Capture equals the capture of that sequence alone (run_capture)."""
import pytest
import torch

from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.attention import recording
from heta_fast.model.attention.pass_state import pass_state
from heta_fast.model.attention.recording import AttentionRecorder, GroupRecorder
from heta_fast.model.capture import CaptureRequest, run_capture
from heta_fast.model.capture_group import run_capture_group
from heta_fast.signals.flow.value_norms import value_norm_reducer
from tests.tiny_models import ARCHITECTURES, FAMILIES, tiny_model, tiny_tokenizer

LENGTHS = (7, 12, 19)
# Every tiny architecture (each pass takes milliseconds): among them mistral (every layer sliding,
# window 3), mixtral (window 4, experts), gemma2 (sliding layers, attention and final-logit
# soft-capping), gemma3 (sliding layers with their own rotary; also as a multimodal model),
# granite (scaled logits), gpt2 (absolute positions).
ARCHS = ARCHITECTURES + FAMILIES
F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)


def _adapter(arch, dtype=torch.float64):
    return ModelAdapter(tiny_model(arch, dtype=dtype))


def _request(adapter):
    return CaptureRequest(attention=True, reduce_values=value_norm_reducer(adapter), key_values=True)


def _sequences(adapter, lengths=LENGTHS, seed=0):
    """Per length n: embeds [n, d] of random words, and targets at the first, a middle and the last positions."""
    g = torch.Generator().manual_seed(seed)
    tok = tiny_tokenizer()
    embeds, positions = [], []
    for n in lengths:
        words = " ".join(f"w{int(i)}" for i in torch.randint(0, 60, (n,), generator=g))
        ids = torch.tensor(tok(words, add_special_tokens=False)["input_ids"])
        assert ids.numel() == n
        embeds.append(adapter.embed(ids))
        positions.append(torch.tensor(sorted({0, n // 2, n - 2, n - 1})))
    return embeds, positions


def _assert_same(got, want, tol):
    torch.testing.assert_close(got.log_probs, want.log_probs, **tol)
    assert got.windows == want.windows
    assert len(got.layers) == len(want.layers) > 0
    for g, w in zip(got.layers, want.layers):
        assert g.scale == w.scale and g.softcap == w.softcap
        for name in ("q", "k", "lse", "values"):
            torch.testing.assert_close(getattr(g, name), getattr(w, name), **tol)
    assert len(got.kv) == len(want.kv) == len(got.layers)
    for (gk, gv), (wk, wv) in zip(got.kv, want.kv):
        assert gk.is_contiguous() and gv.is_contiguous()
        torch.testing.assert_close(gk, wk, **tol)
        torch.testing.assert_close(gv, wv, **tol)


@pytest.mark.parametrize("arch", ARCHS)
def test_group_equals_each_sequence_alone_float64(arch):
    adapter = _adapter(arch)
    request = _request(adapter)
    embeds, positions = _sequences(adapter)
    group = adapter.capture_group(embeds, positions, request)
    assert len(group) == len(LENGTHS)
    for cap, e, p in zip(group, embeds, positions):
        assert cap.log_probs.shape == (p.numel(), adapter.vocab_size)
        assert cap.layers[0].q.shape[1] == cap.layers[0].lse.shape[1] == cap.kv[0][0].shape[2] == e.shape[0]
        _assert_same(cap, run_capture(adapter, e, p, request), F64)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_group_equals_each_sequence_alone_float32(arch):
    adapter = _adapter(arch, torch.float32)
    request = _request(adapter)
    embeds, positions = _sequences(adapter)
    for cap, e, p in zip(run_capture_group(adapter, embeds, positions, request), embeds, positions):
        _assert_same(cap, run_capture(adapter, e, p, request), F32)


def test_group_of_one_equals_run_capture():
    adapter = _adapter("llama")
    request = _request(adapter)
    embeds, positions = _sequences(adapter, lengths=(9,))
    (cap,) = run_capture_group(adapter, embeds, positions, request)
    _assert_same(cap, run_capture(adapter, embeds[0], positions[0], request), F64)


def test_a_sequence_captures_the_same_in_any_group():
    adapter = _adapter("gemma2", torch.float32)
    request = _request(adapter)
    (a, b, c, d), (pa, pb, pc, pd) = _sequences(adapter, lengths=(12, 7, 19, 5), seed=1)
    first = run_capture_group(adapter, [a, b, c], [pa, pb, pc], request)[0]
    for others, where in ((([c, b], [pc, pb]), 2), (([d], [pd]), 0), (([c, d, b], [pc, pd, pb]), 1)):
        seqs, pos = others
        seqs, pos = seqs[:where] + [a] + seqs[where:], pos[:where] + [pa] + pos[where:]
        _assert_same(run_capture_group(adapter, seqs, pos, request)[where], first, F32)


def test_causal_layers_run_the_fused_kernel_causal(monkeypatch):
    """With right padding and no mask, transformers' mask is plain causal: the kernel skips it."""
    calls = []
    real = recording.attention_with_lse

    def spy(query, key, value, mask, scale, causal=False, softcap=None):
        calls.append((query.shape[0], causal))
        return real(query, key, value, mask, scale, causal=causal, softcap=softcap)

    monkeypatch.setattr(recording, "attention_with_lse", spy)
    for arch, causal in (("llama", [True, True]), ("gemma3_text", [False, True])):  # gemma3: layer 0 slides
        adapter = _adapter(arch)
        embeds, positions = _sequences(adapter)
        calls.clear()
        run_capture_group(adapter, embeds, positions, _request(adapter))
        assert calls == [(len(LENGTHS), flag) for flag in causal]


def test_records_are_cut_to_each_sequence_and_padding_copies_the_last_row():
    from heta_fast.model.capture_group import _right_pad

    e = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)]
    padded = _right_pad(e)
    assert padded.shape == (2, 5, 4)
    torch.testing.assert_close(padded[0, :3], e[0], rtol=0, atol=0)
    torch.testing.assert_close(padded[0, 3:], e[0][-1:].expand(2, 4), rtol=0, atol=0)

    module = torch.nn.Module().eval()
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    rec = GroupRecorder({id(module): 0}, [3, 5], attention=True, reduce_values=lambda layer, values: values.clone())
    with torch.no_grad(), pass_state(rec):
        recording.recording_attention(module, q, k, v, None, 0.3)
    assert rec.records == {} and [len(g) for g in rec.groups] == [1, 1]
    assert rec.groups[0][0].q.shape == (4, 3, 8) and rec.groups[0][0].lse.shape == (4, 3)
    torch.testing.assert_close(rec.groups[0][0].values, v[0, :, :3], rtol=0, atol=0)
    torch.testing.assert_close(rec.groups[1][0].k, k[1], rtol=0, atol=0)


def test_refusals():
    module = torch.nn.Module().eval()
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    with torch.no_grad(), pass_state(AttentionRecorder({id(module): 0})), pytest.raises(ValueError, match="1 seq"):
        recording.recording_attention(module, q, k, v, None, 0.3)  # the batch-1 recorder stays batch 1
    adapter = _adapter("llama")
    embeds, positions = _sequences(adapter, lengths=(4, 6))
    with pytest.raises(ValueError, match="sequence 0 has 4 tokens, its target positions reach 4"):
        run_capture_group(adapter, embeds, [torch.tensor([1, 4]), positions[1]], _request(adapter))
    with pytest.raises(ValueError, match="one positions tensor per sequence"):
        run_capture_group(adapter, embeds, positions[:1], _request(adapter))
