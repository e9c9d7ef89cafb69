"""The prompt, target and messages columns hold what the record gave (docs/pipeline.md, row schema):
token ids as JSON text in every row, a generated target as the tokenizer decodes it, a chat
record's messages in its failure row; alike in a local run, on a Ray actor and in write_results."""
import json

import pandas as pd
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.distributed import RayAttributor, driver_blocks
from heta_fast.io import read_results, read_table, write_results
from heta_fast.pipeline.readers import Fields
from heta_fast.pipeline.run import run_to_directory
from tests.tiny_models import text


def rows(out):
    return read_results(out, form="records").set_index("id")


def test_token_id_records_store_their_ids_as_json_text_whether_they_succeed_or_fail(attributor, tmp_path):
    records = [{"id": "ok", "prompt": [5, 6, 7], "target": [8, 9]}, {"id": "bad", "prompt": [], "target": [8]}]
    run_to_directory(attributor, records, tmp_path / "out", progress="quiet")
    table = rows(tmp_path / "out")
    assert table.loc["ok", "ok"] and not table.loc["bad", "ok"]
    assert (table.loc["ok", "prompt"], table.loc["ok", "target"]) == ("[5, 6, 7]", "[8, 9]")
    assert (table.loc["bad", "prompt"], table.loc["bad", "target"]) == ("[]", "[8]")


def test_a_generated_target_is_the_text_the_tokenizer_decodes(attributor, tmp_path):
    records = [{"id": "g", "prompt": text(1, 2, 3)}, {"id": "bad", "prompt": ""}]
    run_to_directory(attributor, records, tmp_path / "out", progress="quiet", generate=3)
    table = rows(tmp_path / "out")
    row = table.loc["g"]
    assert len(row.target_tokens) >= 2
    # The tiny tokenizer's words are separated by spaces: "w29 w0", not the pieces joined ("w29w0").
    assert row.target == " ".join(row.target_tokens) == attributor.tokenizer.decode(list(row.target_ids))
    assert table.loc["bad", "prompt"] == "" and pd.isna(table.loc["bad", "target"])


def test_a_ray_actor_writes_the_rows_a_local_run_writes(tiny_model_dir, tmp_path, monkeypatch):
    # An actor sets its process's torch threads; here the process is the test run's, whose later
    # tests (the service's, comparing in-process numbers bit for bit) must keep theirs.
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    config = HETAConfig(num_probes=1)
    records = [{"id": "g", "prompt": text(1, 2, 3)}, {"id": "ids", "prompt": [5, 6]}, {"id": "bad", "prompt": []}]
    local = Attributor.from_pretrained(str(tiny_model_dir), config=config)
    run_to_directory(local, records, tmp_path / "out", progress="quiet", generate=2)
    actor = RayAttributor(str(tiny_model_dir), config.to_dict(), Fields(), 2, "float32", "cpu", 1, "h")
    (block,) = driver_blocks([r["id"] for r in records], records, 3)
    got = {row["id"]: row for row in actor(block).to_pylist()}
    expected = {row["id"]: row for row in read_table(tmp_path / "out").to_pylist()}
    for key in ("g", "ids", "bad"):
        assert (got[key]["prompt"], got[key]["target"]) == (expected[key]["prompt"], expected[key]["target"])
    assert got["ids"]["prompt"] == "[5, 6]" and got["g"]["target"] == " ".join(got["g"]["target_tokens"])


def test_chat_failure_rows_keep_the_messages_the_record_gave(attributor, tmp_path):
    chat = [{"role": "user", "content": text(3, 4)}]
    records = [{"id": "no-template", "chat": chat, "target": text(5)},  # the tiny tokenizer has no chat template
               {"id": "no-target", "chat": chat},
               {"id": "not-a-list", "chat": "hello", "target": text(5)}]
    run_to_directory(attributor, records, tmp_path / "out", fields=Fields(messages="chat"), progress="quiet")
    table = rows(tmp_path / "out")
    assert not table.ok.any() and table.prompt.isna().all()
    assert json.loads(table.loc["no-template", "messages"]) == json.loads(table.loc["no-target", "messages"]) == chat
    assert json.loads(table.loc["not-a-list", "messages"]) == "hello"
    got = read_results(tmp_path / "out", form="attributions")
    assert got["no-template"].messages == chat and got["no-template"].prompt is None  # as given, in process too
    assert got["not-a-list"].messages == "hello"
    write_results(attributor.attribute_dataset(records, messages_field="chat"), tmp_path / "pairs",
                  attributor=attributor)
    pairs = rows(tmp_path / "pairs")
    assert pairs.loc[table.index, ["prompt", "messages"]].equals(table[["prompt", "messages"]])


def test_write_results_stores_a_target_as_decoded_not_its_pieces_joined(attributor, tmp_path):
    records = [{"id": "a", "prompt": text(1, 2), "target": text(3, 4)}]
    write_results(attributor.attribute_dataset(records), tmp_path / "out", attributor=attributor)
    assert rows(tmp_path / "out").loc["a", "target"] == text(3, 4)
