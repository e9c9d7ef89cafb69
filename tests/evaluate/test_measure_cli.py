"""scripts/measure_cli.py: the measurement scripts' shared curated examples, gold targets, Spearman and atomic save."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from measure_cli import DATA, gold_target, input_text, pending_examples, save_json, spearman  # noqa: E402

needs_curated = pytest.mark.skipif(not DATA.exists(), reason=f"curated set not found at {DATA}")


def test_spearman_uses_mid_ranks_and_is_nan_when_a_side_is_constant():
    # ranks of a: 1 2 3 4; of b: 1.5 1.5 3 4 (a tie). Centred: (-1.5, -0.5, 0.5, 1.5) and
    # (-1, -1, 0.5, 1.5): products sum to 4.5, squared norms 5 and 4.5.
    a, b = [0.1, 0.2, 0.3, 0.4], [5.0, 5.0, 6.0, 9.0]
    assert spearman(a, b) == pytest.approx(4.5 / math.sqrt(5 * 4.5), abs=1e-15)
    assert spearman(torch.tensor(a), torch.tensor(b)[None]) == spearman(a, b)  # tensors of any shape, flattened
    assert spearman(a, [-x for x in a]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_save_json_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "results.json"
    save_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):  # not serialisable: fails before anything is written
        save_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


class _Tokenizer:
    """Records the texts it tokenises; a text's ids are (its length, 7)."""

    def __init__(self):
        self.texts = []

    def __call__(self, text, add_special_tokens=True):
        self.texts.append((text, add_special_tokens))
        return {"input_ids": [len(text), 7]}


@needs_curated
def test_the_scripts_read_the_curated_set_as_the_evaluation_does(tmp_path):
    raw = json.loads(DATA.read_text(encoding="utf-8"))["examples"]
    out = tmp_path / "results.json"
    save_json(out, {raw[1]["id"]: {"done": True}})
    records, pending = pending_examples(out, 0, 3)
    assert list(records) == [raw[1]["id"]]
    assert [k for k, _ in pending] == [0, 2]  # the record already in the file is skipped
    for k, ex in pending:
        assert ex.id == raw[k]["id"]
        assert ex.prompt == raw[k]["input_text"] + "\nAnswer:"
        assert input_text(ex) == raw[k]["input_text"]
        tokenizer = _Tokenizer()
        attributor = SimpleNamespace(tokenizer=tokenizer, adapter=SimpleNamespace(vocab_size=10_000))
        # the first token of " " + answer, tokenised without special tokens (it continues the prompt)
        assert gold_target(attributor, ex) == [len(" " + raw[k]["answer"])]
        assert tokenizer.texts == [(" " + raw[k]["answer"], False)]
