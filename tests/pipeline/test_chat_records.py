"""Chat records in a data-set run: --messages-field reads messages instead of a prompt, each record
attributed as attribute(messages=...) would, the marks written and read back, bad messages failing
only their own record."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.cli import main
from heta_fast.io import read_results
from tests.pipeline.conftest import write_jsonl
from tests.tiny_models import text, tiny_model, tiny_tokenizer

TEMPLATE = "{% for m in messages %}[BOS] {{ m['content'] }} [EOS] {% endfor %}[BOS]"


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat")
    tiny_model("llama", dtype=torch.float32).save_pretrained(path)
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    return path


def test_run_reads_chat_records(chat_model_dir, tmp_path, capsys):
    records = [
        {"id": "a", "chat": [{"role": "user", "content": text(3, 4, 5)}], "target": text(6)},
        {"id": "b", "chat": [{"role": "system", "content": text(1)}, {"role": "user", "content": text(7, 8)}],
         "target": text(9)},
        {"id": "bad", "chat": "not a list", "target": text(6)},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    out = tmp_path / "out"
    code = main(["run", "-q", "--model", str(chat_model_dir), "--input", data, "--output", str(out),
                 "--messages-field", "chat", "--num-probes", "2"])
    assert code == 0, capsys.readouterr().err
    got = read_results(out, form="attributions")
    bad = got["bad"]
    assert not bad.ok and bad.error_type == "InputError" and "messages must be a list" in bad.message
    from transformers import AutoModelForCausalLM, AutoTokenizer

    attr = Attributor(AutoModelForCausalLM.from_pretrained(chat_model_dir),
                      AutoTokenizer.from_pretrained(chat_model_dir), HETAConfig(num_probes=2))
    for rec in records[:2]:
        alone = attr.attribute(messages=rec["chat"], target=rec["target"])
        res = got[rec["id"]]
        assert torch.equal(res.scores, alone.scores.double())
        assert (res.segments, res.special, res.attributed, res.messages, res.sinks, res.architecture) == (
            alone.segments, alone.special, alone.attributed, alone.messages, alone.sinks, alone.architecture)
    long = read_results(out)
    a = long[(long.id == "a") & (long.target_index == 0)]
    assert list(a.segment) == [-1, 0, 0, 0, -1, -1] and list(a.attributed) == [False, True, True, True, False, False]
    assert list(a.special) == [True, False, False, False, True, True]
    assert (a.scores[~a.attributed] == 0).all()
