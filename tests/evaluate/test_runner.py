"""The runner: resumable results file, per-example records, bootstrap intervals, tables, and the CLI."""
import dataclasses
import json

import pytest
import torch

from heta_fast import HETAConfig, InputError
from heta_fast.cli import main
from heta_fast.engine import Attributor
from heta_fast.evaluate.data import load_jsonl
from heta_fast.evaluate.runner import (
    METRICS,
    EvalSettings,
    alignment,
    pipeline_records,
    prepare_example,
    run_evaluation,
)
from heta_fast.evaluate.summary import bootstrap_ci, paired_difference, render_paired, render_table, summarise
from tests.tiny_models import text, tiny_model, tiny_tokenizer

SETTINGS = EvalSettings(samples=2, ig_steps=4, fractions=(0.2, 0.4))


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1))


@pytest.fixture
def data(tmp_path):
    recs = [
        {"id": "a", "prompt": text(5, 6, 7, 8, 9, 10), "target": text(13), "distractor": text(5, 6),
         "support": text(8, 9), "gold": ["w9"]},
        {"id": "b", "prompt": text(15, 16, 17, 18), "target": text(21, 22)},
        {"id": "c", "prompt": text(30, 31, 32, 33, 34), "target": text(40), "distractor": [0, 2], "support": [3, 8]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_records_hold_every_metric_and_resume_after_an_interrupt(attributor, data, tmp_path):
    examples = load_jsonl(data)
    methods = ["saliency", "rollout"]
    full = run_evaluation(attributor, examples, methods, tmp_path / "full.json", SETTINGS, progress=False)
    assert len(full.records) == 6
    rec = {(r["example"], r["method"]): r for r in full.records}
    a = rec[("a", "saliency")]
    assert set(a["metrics"]) == set(METRICS) and all(v is not None for v in a["metrics"].values())
    assert rec[("b", "rollout")]["metrics"]["dsa"] is None and rec[("b", "rollout")]["metrics"]["f1"] is None
    assert len(rec[("b", "rollout")]["scores"]) == 2  # a two-token target: two rows, metrics averaged

    calls = []

    def stop_after_three(example_id, group):
        calls.append((example_id, tuple(group)))
        if len(calls) == 4:
            raise KeyboardInterrupt

    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(attributor, examples, methods, out, SETTINGS, progress=False, on_group=stop_after_three)
    assert len(json.loads(out.read_text())["records"]) == 3  # what finished is on disk
    calls.clear()
    resumed = run_evaluation(attributor, examples, methods, out, SETTINGS, progress=False,
                             on_group=lambda e, g: calls.append((e, tuple(g))))
    assert calls == [("b", ("rollout",)), ("c", ("saliency",)), ("c", ("rollout",))]
    assert _strip(resumed.records) == _strip(full.records)


def test_other_settings_are_refused(attributor, data, tmp_path):
    out = tmp_path / "r.json"
    examples = load_jsonl(data)[:1]
    run_evaluation(attributor, examples, ["rollout"], out, SETTINGS, progress=False)
    other = EvalSettings(samples=3, ig_steps=4, fractions=(0.2, 0.4))
    with pytest.raises(InputError, match="settings.samples: 2 != 3"):
        run_evaluation(attributor, examples, ["rollout"], out, other, progress=False)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a heta-fast eval results file"):
        run_evaluation(attributor, examples, ["rollout"], tmp_path / "junk.json", SETTINGS, progress=False)


def test_a_file_written_before_a_config_field_existed_continues_only_under_its_default(attributor, data, tmp_path):
    out = tmp_path / "r.json"
    examples = load_jsonl(data)
    run_evaluation(attributor, examples[:1], ["rollout"], out, SETTINGS, progress=False)
    payload = json.loads(out.read_text())
    del payload["header"]["heta_config"]["sink_token"]  # as written before the field was added
    out.write_text(json.dumps(payload))
    run_evaluation(attributor, examples[:2], ["rollout"], out, SETTINGS, progress=False)
    assert len(json.loads(out.read_text())["records"]) == 2
    payload = json.loads(out.read_text())
    del payload["header"]["heta_config"]["sink_token"]
    out.write_text(json.dumps(payload))
    other = Attributor(attributor.model, attributor.tokenizer, attributor.config.replace(sink_token="eos"))
    with pytest.raises(InputError, match="heta_config.sink_token: 'none' != 'eos'"):
        run_evaluation(other, examples, ["rollout"], out, SETTINGS, progress=False)


def test_failed_examples_are_recorded_and_counted(attributor, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "long", "prompt": " ".join(["w1"] * 80), "target": "w2"}) + "\n"
                    + json.dumps({"id": "ok", "prompt": "w1 w2 w3", "target": "w4"}))
    store = run_evaluation(attributor, load_jsonl(path), ["saliency"], tmp_path / "r.json", SETTINGS, progress=False)
    bad = [r for r in store.records if not r["ok"]]
    assert len(bad) == 1 and "maximum is 64" in bad[0]["error"]
    (summary,) = summarise(store.records)
    assert summary.n == 1 and summary.failed == 1
    assert "1 (1 failed)" in render_table([summary])


def test_metric_subset(attributor, data, tmp_path):
    settings = EvalSettings(samples=2, metrics=("dsa", "f1"))
    store = run_evaluation(attributor, load_jsonl(data)[:1], ["rollout"], tmp_path / "r.json", settings, progress=False)
    m = store.records[0]["metrics"]
    assert m["soft_nc"] is None and m["comprehensiveness"] is None and m["dsa"] is not None
    header = render_table(summarise(store.records)).splitlines()[0]
    assert "DSA" in header and "F1" in header and "Soft-NC" not in header
    with pytest.raises(ValueError):
        EvalSettings(metrics=("dsa", "magic"))


def test_alignment_excluding_the_first_token(attributor, data):
    prep = prepare_example(attributor, load_jsonl(data)[0])  # distractor [0, 1], support [3, 4], gold [4]
    assert (prep.distractor, prep.support, prep.gold) == ([0, 1], [3, 4], [4])
    scores = torch.tensor([6.0, 1.0, 0.0, 1.0, 2.0, -2.0])  # signed: magnitudes are used
    full = alignment(scores, prep)
    assert full["dsa"] == pytest.approx((1 + 2) / 12 - (6 + 1) / 12)
    assert full["f1"] == 0.0  # top-1 is position 0
    excl = alignment(scores, prep, exclude_first=True)
    assert excl["dsa"] == pytest.approx((1 + 2) / 6 - 1 / 6)
    assert excl["f1"] == 1.0  # top-1 among the rest: position 4 ties position 5 (|−2|), position order wins
    excl = alignment(torch.tensor([6.0, 1.0, 0.0, 1.0, 2.0, 3.0]), prep, exclude_first=True)
    assert excl["f1"] == 0.0


def test_pipeline_records_attribute_what_the_evaluation_attributes(attributor, data):
    """The records benchmarks and profiles feed the pipeline: each example's prompt and target, with
    ``target_tokens`` applied, tokenised as the evaluation tokenises them."""
    examples = load_jsonl(data)
    examples.append(dataclasses.replace(examples[1], id="b1", target_tokens=1))
    records = pipeline_records(attributor, examples)
    assert [r["id"] for r in records] == ["a", "b", "c", "b1"]
    assert len(records[1]["target"]) == 2 and records[3]["target"] == records[1]["target"][:1]
    for ex, rec in zip(examples, records):
        prepared = prepare_example(attributor, ex)
        assert rec["prompt"] == ex.prompt and rec["target"] == prepared.target_ids.tolist()
        res = attributor.attribute(rec["prompt"], rec["target"])
        assert res.context_ids == prepared.context_ids.tolist() and res.target_ids == rec["target"]


def test_bootstrap_interval():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.2, None, float("nan")]) == (0.2, 0.2, 0.2)
    mean, lo, hi = bootstrap_ci(list(range(20)))
    assert mean == pytest.approx(9.5) and lo < mean < hi and bootstrap_ci(list(range(20))) == (mean, lo, hi)
    # The bootstrap interval of a mean is about ±1.96 standard errors for a large sample.
    x = torch.randn(400, generator=torch.Generator().manual_seed(0)).tolist()
    _, lo, hi = bootstrap_ci(x)
    se = float(torch.tensor(x).std()) / 20
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # ... and exactly the documented percentile bootstrap.
    import numpy as np

    arr = np.asarray(x)
    means = arr[np.random.default_rng(0).integers(0, arr.size, size=(2000, arr.size))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)


def test_cli_eval_writes_results_and_markdown(tiny_model_dir, data, tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "t.md"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "saliency,ig",
            "--limit", "2", "--out", str(out), "--markdown", str(md), "--samples", "2", "--ig-steps", "4",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "saliency" in printed and "integrated_gradients" in printed and "Soft-NC" in printed
    records = json.loads(out.read_text())["records"]
    pairs = {(e, m) for e in "ab" for m in ("saliency", "integrated_gradients")}
    assert {(r["example"], r["method"]) for r in records} == pairs
    assert md.read_text().startswith("| method | n |")
    assert main(args + ["--exclude-first"]) == 0  # nothing left to compute: the table again
    assert "first token excluded" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["records"]) == 4


@pytest.mark.parametrize("extra,match", [
    (["--methods", "saliency,magic"], "unknown method 'magic'"),
    (["--measure", "bits"], "--measure"),
    (["--fractions", "0.1,x"], "--fractions"),
    (["--metrics", "dsa,nope"], "unknown metrics"),
])
def test_cli_eval_user_errors(tiny_model_dir, data, tmp_path, capsys, extra, match):
    out = str(tmp_path / "r.json")
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", out] + extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err


def test_cli_eval_shards_then_merge(tiny_model_dir, data, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout", "--samples", "2",
            "--no-progress"]
    for i in range(2):
        assert main(base + ["--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.json")]) == 0
    assert "2 examples x 1 methods" in capsys.readouterr().out.splitlines()[0]
    out = tmp_path / "all.json"
    assert main(base + ["--out", str(out), "--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json")]) == 0
    assert "\n3 examples;" in capsys.readouterr().out
    assert {r["example"] for r in json.loads(out.read_text())["records"]} == {"a", "b", "c"}
    assert main(base + ["--shard", "3/2", "--out", str(out)]) == 2
    assert "--shard" in capsys.readouterr().err


def test_cli_eval_missing_data_file(tiny_model_dir, tmp_path, capsys):
    missing, out = str(tmp_path / "no.jsonl"), str(tmp_path / "r.json")
    code = main(["eval", "--model", str(tiny_model_dir), "--data", missing, "--out", out])
    assert code == 2 and "no such data file" in capsys.readouterr().err


def test_paired_difference_uses_common_examples():
    def rec(e, m, v):
        return {"example": e, "method": m, "ok": True, "metrics": {"dsa": v}, "first_excluded": {"dsa": v + 1}}

    records = [rec("x", "heta", 0.5), rec("x", "rollout", 0.2), rec("y", "heta", 0.1), rec("y", "rollout", 0.3),
               rec("z", "heta", 0.9), {"example": "w", "method": "rollout", "ok": False}]
    mean, lo, hi, n = paired_difference(records, "heta", "rollout", "dsa")
    assert n == 2 and mean == pytest.approx((0.3 - 0.2) / 2) and lo <= mean <= hi
    assert paired_difference(records, "heta", "rollout", "dsa", exclude_first=True)[0] == pytest.approx(0.05)


def test_paired_table_lists_every_other_method_with_signed_differences():
    def rec(e, m, dsa):
        return {"example": e, "method": m, "ok": True, "metrics": {"dsa": dsa, "soft_nc": None}}

    records = [rec("x", "heta", 0.5), rec("x", "rollout", 0.2), rec("x", "saliency", 0.9),
               rec("y", "heta", 0.1), rec("y", "rollout", 0.0), rec("y", "saliency", 0.1)]
    lines = render_paired(records, "heta", markdown=True).splitlines()
    assert lines[0] == "| heta − method | DSA ↑ |"  # Soft-NC has no values: left out
    assert lines[2].startswith("| saliency | -0.200 [") and lines[3].startswith("| rollout | +0.200 [")


def test_cli_eval_paired_must_name_an_evaluated_method(tiny_model_dir, data, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout",
                 "--metrics", "dsa", "--out", str(tmp_path / "r.json"), "--paired", "heta", "--no-progress"])
    assert code == 2 and "--paired" in capsys.readouterr().err


def test_shards_cover_the_data_once_and_merge_into_the_unsharded_results(attributor, data, tmp_path):
    from heta_fast.evaluate.data import select_shard

    examples = load_jsonl(data)
    shards = [select_shard(examples, f"{i}/2") for i in range(2)]
    assert [[e.id for e in s] for s in shards] == [["a", "c"], ["b"]]
    assert select_shard(examples, None) == examples
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            select_shard(examples, bad)

    methods = ["saliency", "rollout"]
    full = run_evaluation(attributor, examples, methods, tmp_path / "full.json", SETTINGS, progress=False)
    for i, shard in enumerate(shards):
        run_evaluation(attributor, shard, methods, tmp_path / f"s{i}.json", SETTINGS, progress=False)
    calls = []
    merged = run_evaluation(attributor, examples, methods, tmp_path / "merged.json", SETTINGS, progress=False,
                            merge=[tmp_path / "s0.json", tmp_path / "s1.json"],
                            on_group=lambda e, g: calls.append(e))
    assert calls == []  # everything came from the shards
    key = lambda r: (r["example"], r["method"])  # noqa: E731
    assert sorted(_strip(merged.records), key=key) == sorted(_strip(full.records), key=key)
    # a shard written with other settings is refused, and a missing one is named
    other = EvalSettings(samples=3, ig_steps=4, fractions=(0.2, 0.4))
    run_evaluation(attributor, shards[1], ["rollout"], tmp_path / "other.json", other, progress=False)
    with pytest.raises(InputError, match="other settings"):
        run_evaluation(attributor, examples, methods, tmp_path / "m2.json", SETTINGS, progress=False,
                       merge=[tmp_path / "other.json"])
    with pytest.raises(InputError, match="no such results file"):
        run_evaluation(attributor, examples, methods, tmp_path / "m3.json", SETTINGS, progress=False,
                       merge=[tmp_path / "absent.json"])


def _other_data(tmp_path, data, change):
    """``data`` with the example of id 'b' changed by ``change`` (a dict update), as d2.jsonl."""
    recs = [json.loads(line) for line in data.read_text().splitlines()]
    recs = [{**r, **change} if r["id"] == "b" else r for r in recs]
    path = tmp_path / "d2.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path


@pytest.mark.parametrize("change", [{"prompt": text(15, 16, 17, 19)}, {"target": text(21, 23)}])
def test_resuming_or_merging_records_of_other_examples_with_the_same_ids_is_refused(attributor, data, tmp_path,
                                                                                    change):
    methods = ["rollout"]
    settings = dataclasses.replace(SETTINGS, metrics=("dsa",))
    out = tmp_path / "r.json"
    run_evaluation(attributor, load_jsonl(data), methods, out, settings, progress=False)
    run_evaluation(attributor, load_jsonl(data), methods, out, settings, progress=False)  # the same data continues
    other = load_jsonl(_other_data(tmp_path, data, change))
    with pytest.raises(InputError, match=r"r\.json holds records of example 'b' computed on another example"):
        run_evaluation(attributor, other, methods, out, settings, progress=False)
    with pytest.raises(InputError, match=r"--merge file .*r\.json holds records of example 'b'"):
        run_evaluation(attributor, other, methods, tmp_path / "m.json", settings, progress=False, merge=[out])
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("methods,paired,shown", [("rollout,ig", "ig", "integrated_gradients − method"),
                                                  ("HETA,rollout", "HETA", "heta − method")])
def test_cli_eval_paired_names_are_read_as_methods_are(tiny_model_dir, data, tmp_path, capsys, methods, paired,
                                                       shown):
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", methods, "--limit", "1",
                 "--metrics", "dsa", "--ig-steps", "2", "--out", str(tmp_path / "r.json"), "--paired", paired,
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert shown in captured.out


def test_cli_eval_chat_format_on_a_model_without_a_chat_template_is_one_error(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout", "--metrics",
                 "dsa", "--out", str(out), "--prompt-format", "chat", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has no chat template" in err and str(tiny_model_dir.name) in err
    assert not out.exists()
