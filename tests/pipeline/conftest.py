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


def write_records(path, records) -> str:
    """``records`` as a file of the format ``path`` names (.jsonl, .parquet, .csv); a field some
    records lack is null (Parquet) or empty text (CSV) in them."""
    import pandas as pd

    if path.suffix == ".jsonl":
        return write_jsonl(path, records)
    if path.suffix == ".parquet":
        pd.DataFrame(records).to_parquet(path)
    else:
        pd.DataFrame(records).to_csv(path, index=False)
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


def _truncated_parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(make_records(4)), sink)
    return sink.getvalue()[:-100]  # the footer cut off


# Input files that cannot be read: name -> (contents, what the error says after the file's name).
UNREADABLE = {
    "bad-byte.jsonl": (b'{"id": "a", "prompt": "w1", "target": "w2"}\n{"id": "b", "prompt": "caf\xe9"}\n',
                       r"not UTF-8 text \(byte 0xe9 on line 2\)"),
    "deep.jsonl": (b'{"id": "a", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "target": "w1"}\n',
                   ":1: JSON nested too deeply"),
    "empty.csv": (b"", r"not a readable CSV file \(the file is empty"),
    "extra-field.csv": (b"id,prompt,target\na,w1,w2\nb,w1,w2,w3\n",
                        r"not a readable CSV file \(line 3 has 4 fields; the header names 3\)"),
    "open-quote.csv": (b'id,prompt,target\na,"w1,w2\n', r"not a readable CSV file \(line 2: unexpected end of data"),
    "stray-quote.csv": (b'id,prompt,target\na,"w1"w2,w3\n', r"not a readable CSV file \(line 2: ',' expected after"),
    "header-twice.csv": (b'id,prompt,prompt\na,w1,w2\n', r"not a readable CSV file \(the header names 'prompt' more"),
    "quote-in-field.csv": (b'id,prompt,target\na,say "w1, w2" w3,w4\n',
                           r"not a readable CSV file \(line 2: a quote inside a field that does not start with one"),
    "latin-1.csv": ("id,prompt,target\na,café,w1\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 on line 2\)"),
    "utf-16.csv": ("id,prompt,target\na,w1,w2\n".encode("utf-16"), r"not UTF-8 text \(byte 0xff on line 1\)"),
    "text.parquet": (b"id,prompt,target\na,w1,w2\n", "not a readable Parquet file"),
    "empty.parquet": (b"", "not a readable Parquet file"),
    "truncated.parquet": (_truncated_parquet, "not a readable Parquet file"),
}


def write_unreadable(directory, name: str) -> tuple[str, str]:
    """(path, expected message pattern) of the UNREADABLE file ``name`` written into ``directory``."""
    contents, message = UNREADABLE[name]
    path = directory / name
    path.write_bytes(contents() if callable(contents) else contents)
    return str(path), message


def corrupt_prompts(path, records: list[dict], rows_per_group: int = 4) -> str:
    """``records`` as a Parquet file (uncompressed, row groups of ``rows_per_group``) whose third row
    group's prompt column is overwritten with junk: its footer and id column still read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=rows_per_group, compression="none")
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(1)
    assert chunk.path_in_schema == "prompt"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    return str(path)
