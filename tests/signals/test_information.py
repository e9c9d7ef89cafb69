"""The information term's fast path (prefix sharing, budgeted batches, fused KL, windows) against the reference."""
import sys

import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.errors import MemoryBudgetError
from heta_fast.memory import ModelShape
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.attention import choose_no_grad_attention
from heta_fast.model.capture import CaptureRequest
from heta_fast.reference import information_reference
from heta_fast.signals.information import information
from heta_fast.signals.information.masked_batches import MaskedBatch
from heta_fast.signals.information.masking import mask_vectors
from heta_fast.signals.information.prefix_cache import PrefixCache
from heta_fast.signals.information.signal import KL_CHUNK
from heta_fast.windows import Window, context_windows
from tests.tiny_models import ARCHITECTURES, tiny_model, tiny_tokenizer


def _information(adapter, x, pos, n_ctx, masks, orig, **options):
    """:func:`information` with the config fields among ``options`` gathered into a HETAConfig."""
    fields = {k: options.pop(k) for k in ("max_batch", "memory_budget", "window_size", "window_overlap")
              if k in options}
    return information(adapter, x, pos, n_ctx, masks, orig, HETAConfig(**fields), **options)


N_CTX, N_TARGETS = 7, 3  # input = 7 context tokens + 2 target tokens; targets predicted at 6, 7, 8
IDS = torch.tensor([2, 10, 33, 5, 41, 7, 19, 28, 12])


def _setup(arch="llama", ids=IDS, n_ctx=N_CTX, n_targets=N_TARGETS):
    adapter = ModelAdapter(tiny_model(arch))
    x = adapter.embed(ids)
    positions = torch.arange(n_targets) + n_ctx - 1
    orig = adapter.log_probs(x[None], positions)[0]
    return adapter, x, positions, orig


def _zeros(n, x):
    return torch.zeros(n, x.shape[-1], dtype=x.dtype)


TIGHT = dict(rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_path_equals_reference_for_every_architecture(arch):
    adapter, x, pos, orig = _setup(arch)
    masks = _zeros(N_CTX, x)
    before = adapter.model.config._attn_implementation
    got = _information(adapter, x, pos, N_CTX, masks, orig, max_batch=3)
    assert adapter.model.config._attn_implementation == before  # the attention switch is undone
    # GPT-J's attention computes in float32 whatever the model dtype.
    tol = dict(rtol=1e-5, atol=1e-7) if arch == "gptj" else TIGHT
    torch.testing.assert_close(got, information_reference(adapter, x, pos, N_CTX, masks), **tol)


@pytest.mark.parametrize("max_batch", [1, 2, 32])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_one_and_several_targets_any_batch_size(max_batch, n_targets):
    ids = IDS[: N_CTX + n_targets - 1]
    adapter, x, pos, orig = _setup(ids=ids, n_targets=n_targets)
    masks = _zeros(N_CTX, x)
    stats = {}
    got = _information(adapter, x, pos, N_CTX, masks, orig, max_batch=max_batch, stats=stats)
    torch.testing.assert_close(got, information_reference(adapter, x, pos, N_CTX, masks), **TIGHT)
    assert stats["max_rows"] <= max_batch


@pytest.mark.parametrize("scheme", ["zero", "mean", "pad", "unk"])
def test_every_mask_scheme(scheme):
    adapter, x, pos, orig = _setup()
    masks = mask_vectors(scheme, x[:N_CTX], adapter.model.get_input_embeddings(), tiny_tokenizer())
    got = _information(adapter, x, pos, N_CTX, masks, orig, max_batch=4)
    torch.testing.assert_close(got, information_reference(adapter, x, pos, N_CTX, masks), **TIGHT)


def test_targets_before_a_masked_token_are_exactly_zero():
    adapter, x, _, _ = _setup()
    pos = torch.tensor([2, 4, 6])  # general positions, as the reference allows
    orig = adapter.log_probs(x[None], pos)[0]
    masks = _zeros(N_CTX, x)
    got = _information(adapter, x, pos, N_CTX, masks, orig, max_batch=2)
    ref = information_reference(adapter, x, pos, N_CTX, masks)
    torch.testing.assert_close(got, ref, **TIGHT)
    assert torch.all(got[0, 3:] == 0) and torch.all(got[1, 5:] == 0) and torch.all(got[0, :3] > 0)


@pytest.mark.parametrize("max_batch", [1, 3, 32])
def test_masked_passes_share_the_prefix_without_padding(max_batch):
    # Packed batches: the masked passes run exactly sum_i (n - i) = n(n+1)/2 token-positions
    # whatever the batch size; without a given prefix, the unmasked prefix pass adds n - 1.
    n = 12
    ids = torch.arange(n) + 4
    adapter, x, pos, orig = _setup(ids=ids, n_ctx=n, n_targets=1)
    stats = {}
    _information(adapter, x, pos, n, _zeros(n, x), orig, max_batch=max_batch, stats=stats)
    assert stats["layout"] == "packed" and stats["max_rows"] == min(max_batch, n)
    assert stats["masked_positions"] == n * (n + 1) // 2
    assert stats["positions"] == n * (n + 1) // 2 + n - 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_from_the_forward_pass_is_the_whole_cost(arch):
    # The engine hands over the keys and values of its own forward pass: the information term
    # then runs only the masked positions, sum_i (N - i) for an input of N = n + T - 1 tokens
    # (n(n+1)/2 <= n^2/2 + n for one target), and the numbers do not change.
    n = 9
    ids = torch.arange(n + 1) % 50 + 4
    adapter, x, pos, orig = _setup(arch, ids=ids, n_ctx=n, n_targets=2)
    capture = adapter.capture(x, pos, CaptureRequest(key_values=True))
    stats = {}
    got = _information(adapter, x, pos, n, _zeros(n, x), orig, max_batch=4, stats=stats,
                      prefix=PrefixCache.from_kv(capture.kv, n - 1))
    assert stats["positions"] == stats["masked_positions"] and stats["prefix_passes"] == 0
    if choose_no_grad_attention(adapter.model) is None:
        # attention fixed at build time (GPT-J in older transformers): rectangular batches, padded
        assert stats["layout"] == "rectangular" and stats["masked_positions"] > n * (n + 1) // 2 + n
    else:
        assert stats["layout"] == "packed" and stats["batch_attention"] == "heta_packed"
        assert stats["masked_positions"] == n * (n + 1) // 2 + n * (2 - 1)
    tol = dict(rtol=1e-5, atol=1e-7) if arch == "gptj" else TIGHT
    torch.testing.assert_close(got, information_reference(adapter, x, pos, n, _zeros(n, x)), **tol)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_rectangular_layout_equals_reference(arch):
    # The layout FlashAttention-2 needs (one start per batch, padded rows), forced on the CPU.
    adapter, x, pos, orig = _setup(arch)
    masks = _zeros(N_CTX, x)
    stats = {}
    got = _information(adapter, x, pos, N_CTX, masks, orig, max_batch=3, layout="rectangular", stats=stats)
    assert stats["layout"] == "rectangular" and stats["max_rows"] == 3
    torch.testing.assert_close(got, information_reference(adapter, x, pos, N_CTX, masks), **TIGHT)


# ----------------------------------------------------------------------------- windows
def test_window_definition():
    assert context_windows(5, 0, 0.5) == [Window(0, 5)]
    assert context_windows(5, 8, 0.5) == [Window(0, 5)]
    assert context_windows(10, 4, 0.5) == [Window(0, 4), Window(2, 6), Window(4, 8), Window(6, 10)]
    # The last window is aligned to the end of the context; every token is covered.
    wins = context_windows(11, 4, 0.5)
    assert wins[-1] == Window(7, 11) and wins[-2] == Window(6, 10)
    for n, size, overlap in [(11, 4, 0.5), (37, 8, 0.25), (9, 3, 0.0), (20, 5, 0.9)]:
        covered = torch.zeros(n)
        for w in context_windows(n, size, overlap):
            assert w.size == size
            covered[w.start : w.stop] += 1
        assert covered.min() >= 1


def _windowed_reference(adapter, x, pos, n_ctx, masks, size, overlap):
    """The windowed definition written plainly: the reference on each window's input, averaged."""
    windows = context_windows(n_ctx, size, overlap)
    values = {i: [] for i in range(n_ctx)}
    for w in windows:
        inp = torch.cat([x[: w.stop], x[n_ctx:]])
        full = information_reference(adapter, inp, pos - (n_ctx - w.stop), w.stop, masks[: w.stop])
        for i in range(w.start, w.stop):
            values[i].append(full[:, i])
    return torch.stack([torch.stack(values[i]).mean(0) for i in range(n_ctx)], dim=1)


@pytest.mark.parametrize("arch,max_batch", [("llama", 2), ("gpt2", 32), ("mistral", 3)])
def test_windowed_fast_path_equals_windowed_reference(arch, max_batch):
    ids = torch.tensor([2, 10, 33, 5, 41, 7, 19, 28, 12, 50, 9, 17, 30])  # 11 context + 2 targets
    n_ctx = 11
    adapter, x, pos, orig = _setup(arch, ids=ids, n_ctx=n_ctx)
    masks = mask_vectors("mean", x[:n_ctx])
    got = _information(adapter, x, pos, n_ctx, masks, orig, max_batch=max_batch, window_size=4, window_overlap=0.5)
    expected = _windowed_reference(adapter, x, pos, n_ctx, masks, 4, 0.5)
    torch.testing.assert_close(got, expected, **TIGHT)
    # The windows change the numbers (the comparison can fail) ...
    assert (got - information_reference(adapter, x, pos, n_ctx, masks)).abs().max() > 1e-6
    # ... except in the last window, whose input is the full request, for the tokens only it covers.
    torch.testing.assert_close(got[:, 10:], information_reference(adapter, x, pos, n_ctx, masks)[:, 10:], **TIGHT)


def test_a_window_as_long_as_the_context_changes_nothing():
    adapter, x, pos, orig = _setup()
    masks = _zeros(N_CTX, x)
    plain = _information(adapter, x, pos, N_CTX, masks, orig)
    torch.testing.assert_close(_information(adapter, x, pos, N_CTX, masks, orig, window_size=N_CTX), plain,
                               rtol=0, atol=0)


# ----------------------------------------------------------------------------- memory budget
def _one_variant_bytes(adapter, n_used, n_ctx, n_targets):
    """What the engine's memory model asks for one masked variant of the longest row."""
    from heta_fast.memory import MaskedPassBudget

    budget = MaskedPassBudget(ModelShape.of(adapter.model), 1, n_targets, n_ctx - 1, n_windows=1, kl_chunk=KL_CHUNK)
    return budget.batch_bytes(MaskedBatch(0, 0, 1, n_used))


def test_budget_below_one_variant_raises_a_clear_error():
    adapter, x, pos, orig = _setup()
    need = _one_variant_bytes(adapter, len(IDS), N_CTX, N_TARGETS)
    with pytest.raises(MemoryBudgetError, match="cannot hold one masked variant.*raise memory_budget"):
        _information(adapter, x, pos, N_CTX, _zeros(N_CTX, x), orig, memory_budget=need - 1)
    _information(adapter, x, pos, N_CTX, _zeros(N_CTX, x), orig, memory_budget=need)  # exactly enough


def test_small_budget_gives_the_same_numbers_as_a_large_one():
    adapter, x, pos, orig = _setup()
    masks = _zeros(N_CTX, x)
    small, large = {}, {}
    need = _one_variant_bytes(adapter, len(IDS), N_CTX, N_TARGETS)
    a = _information(adapter, x, pos, N_CTX, masks, orig, memory_budget=need, stats=small)
    b = _information(adapter, x, pos, N_CTX, masks, orig, memory_budget=2**31, stats=large)
    assert small["passes"] > large["passes"] and large["max_rows"] > 1
    torch.testing.assert_close(a, b, **TIGHT)


def test_small_budget_chunks_the_prefix_pass_of_a_windowed_long_input():
    ids = torch.arange(40) % 60 + 4
    n_ctx = 39
    adapter, x, pos, orig = _setup(ids=ids, n_ctx=n_ctx, n_targets=2)
    masks = _zeros(n_ctx, x)
    shape = ModelShape.of(adapter.model)
    # Enough for a window's variants (5 tokens + 1 target, attending to <= 40 keys) but not for
    # the 38-token prefix in one pass.
    budget = (shape.kv_bytes(1, n_ctx - 1) + 2 * 2 * shape.vocab * 8 * 13 + shape.pass_bytes(1, 16, 40)
              + shape.head_bytes(2, KL_CHUNK))
    stats = {}
    got = _information(adapter, x, pos, n_ctx, masks, orig, memory_budget=budget, window_size=5, stats=stats)
    assert stats["prefix_passes"] > 1
    ref = _information(adapter, x, pos, n_ctx, masks, orig, window_size=5)
    torch.testing.assert_close(got, ref, **TIGHT)


# ----------------------------------------------------------------------------- attention switch
def test_fused_attention_choice_never_loads_flash_attn_on_cpu(monkeypatch):
    model = tiny_model("llama")
    assert choose_no_grad_attention(model) == "sdpa"
    # a model whose attention class is fixed when it is built (GPT-J in older transformers)
    monkeypatch.setattr(model, "_can_set_attn_implementation", lambda: False)
    assert choose_no_grad_attention(model) is None
    assert "flash_attn" not in sys.modules


# ----------------------------------------------------------------------------- default model
@pytest.mark.real_model
def test_default_model_fp32_matches_reference(default_attributor):
    attr = default_attributor
    adapter = attr.adapter
    ids = attr.tokenizer("Paris is the capital of", add_special_tokens=True)["input_ids"]
    target = attr.tokenizer(" France.", add_special_tokens=False)["input_ids"]
    n_ctx = len(ids)
    x = adapter.embed(torch.tensor(ids + target[:-1]))
    pos = torch.arange(len(target)) + n_ctx - 1
    orig = adapter.log_probs(x[None], pos)[0]
    masks = _zeros(n_ctx, x)
    got = _information(adapter, x, pos, n_ctx, masks, orig, max_batch=4)
    ref = information_reference(adapter, x, pos, n_ctx, masks)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=2e-5)


# ----------------------------------------------------------------------------- engine wiring
def test_engine_passes_windows_and_budget_to_the_information_term():
    from heta_fast import Attributor, HETAConfig
    from tests.tiny_models import text

    prompt, target = text(10, 3, 44, 7, 21, 9, 30, 12, 5), text(8, 40)
    cfg = HETAConfig(components=("information",), window_size=4, window_overlap=0.5)
    attr = Attributor(tiny_model("llama"), tiny_tokenizer(), cfg)
    res = attr.attribute(prompt, target)
    n_ctx = len(res.context_ids)
    x = attr.adapter.embed(torch.tensor(res.context_ids + res.target_ids[:-1]))
    pos = torch.arange(2) + n_ctx - 1
    expected = _windowed_reference(attr.adapter, x, pos, n_ctx, _zeros(n_ctx, x), 4, 0.5)
    torch.testing.assert_close(res.information, expected, **TIGHT)
    attr.config = cfg.replace(memory_budget=1)
    with pytest.raises(MemoryBudgetError):
        attr.attribute(prompt, target)

