"""Loading a model folder: a checkpoint that lacks some of the model's weights is refused (transformers
would initialise them at random and only print a warning); tied and derived weights are not missing."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from heta_fast.cli import main
from heta_fast.errors import ModelLoadError
from heta_fast.model import cache_entry, gguf_cache
from heta_fast.model.loading import load_model_and_tokenizer
from tests.tiny_models import tiny_model, tiny_tokenizer

GONE = "model.layers.1.self_attn.v_proj.weight"


def _folder(path, drop=(), **overrides):
    """A tiny Llama saved to ``path`` (float32), without the tensors named in ``drop``."""
    tiny_model("llama", dtype=torch.float32, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    for name in drop:
        del tensors[name]
    save_file(tensors, weights, metadata={"format": "pt"})
    return path


def test_a_checkpoint_missing_a_weight_is_refused_naming_it(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model_and_tokenizer(str(_folder(tmp_path, drop=[GONE])))
    message = str(info.value)
    assert "\n" not in message and GONE in message and "lacks 1 of the model's weights" in message


def test_the_refusal_names_the_first_missing_weights_and_counts_the_rest(tmp_path):
    gone = [f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.up_proj")]
    with pytest.raises(ModelLoadError, match=r"lacks 4 of .*model.layers.0.mlp.up_proj.weight, "
                                             r"model.layers.0.self_attn.q_proj.weight, "
                                             r"model.layers.1.mlp.up_proj.weight and 1 more\)"):
        load_model_and_tokenizer(str(_folder(tmp_path, drop=gone)))


def test_a_tied_lm_head_is_not_missing(tmp_path):
    folder = _folder(tmp_path, tie_word_embeddings=True)
    assert not any(name.startswith("lm_head") for name in load_file(folder / "model.safetensors"))
    model, _ = load_model_and_tokenizer(str(folder))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_the_cli_reports_a_missing_weight_in_one_line_with_exit_code_2(tmp_path, capsys):
    folder = _folder(tmp_path, drop=[GONE])
    capsys.readouterr()
    code = main(["attribute", "--model", str(folder), "--prompt", "w1 w2 w3", "--target", " w4", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and GONE in lines[0] and lines[0].startswith("heta-fast: error:")


def test_a_converted_gguf_cache_loads_and_one_lacking_a_weight_is_rebuilt_then_refused(tmp_path, monkeypatch):
    """The GGUF path (the default model's): the float cache of a tied model holds no LM head and
    loads; a conversion that lacks a weight is rebuilt once, then refused."""
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cache_entry, "_VERIFIED", {})
    drop, conversions = [], []

    def convert(gguf_path, folder):  # stands in for the de-quantisation of a tiny tied Llama
        conversions.append(folder)
        _folder(folder, drop=drop, tie_word_embeddings=True)

    monkeypatch.setattr(gguf_cache, "convert_gguf", convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    model, _ = load_model_and_tokenizer(str(gguf))
    assert model.lm_head.weight is model.model.embed_tokens.weight and len(conversions) == 1
    drop.append(GONE)
    gguf.write_bytes(b"GGUF" + bytes(65))  # another file: converted again
    with pytest.raises(ModelLoadError, match=GONE):
        load_model_and_tokenizer(str(gguf))
    assert len(conversions) == 3
