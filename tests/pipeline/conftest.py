"""Records and an Attributor on the tiny Llama for the pipeline tests."""
import json
import random

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from tests.tiny_models import text, tiny_model, tiny_tokenizer

# Bad records: an empty prompt, an empty target, a context over the tiny model's 64 positions.
BAD = {"r3": "InputError", "r5": "InputError", "r7": "InputError"}


def make_records(n: int = 12, seed: int = 0) -> list[dict]:
    """n records {id, prompt, target} of 3-20 tiny-tokenizer words; r3, r5, r7 are bad (BAD)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt = text(*[rng.randint(0, 59) for _ in range(rng.randint(3, 20))])
        records.append({"id": f"r{i}", "prompt": prompt, "target": text(rng.randint(0, 59))})
    bad = {3: ("prompt", ""), 5: ("target", ""), 7: ("prompt", text(*range(60)) + " " + text(*range(10)))}
    for i, (field, value) in bad.items():
        if i < n:
            records[i][field] = value
    return records


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(), model_name="tiny")


@pytest.fixture
def records():
    return make_records()


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def assert_same_results(got: dict, expected: dict) -> None:
    """Two {id: result} maps hold the same ids and the same numbers (float64 of float32 results)."""
    assert sorted(got) == sorted(expected)
    for key, res in expected.items():
        other = got[key]
        assert other.ok == res.ok, key
        if not res.ok:
            assert (other.error_type, other.message) == (res.error_type, res.message)
            continue
        assert other.context_tokens == res.context_tokens and other.target_ids == res.target_ids
        for name in ("scores", "flow", "curvature", "information"):
            torch.testing.assert_close(getattr(other, name).double(), getattr(res, name).double(),
                                       rtol=1e-6, atol=1e-9)
