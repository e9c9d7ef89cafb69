"""Issue 15, one regression test per item: bad input gets a typed error (one line at the CLI,
exit 2) before any work, and nothing is read silently as something else."""
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from heta_fast import Attribution, Attributor, HETAConfig
from heta_fast.cli import main
from heta_fast.errors import (
    ConfigError,
    InputError,
    MemoryBudgetError,
    ModelLoadError,
    NonFiniteError,
    ResultFormatError,
)
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT, TARGET = text(5, 6, 7, 8), text(9)


@pytest.fixture(scope="module")
def attr():
    return Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(),
                      HETAConfig(num_probes=1, components=("flow", "information")))


def _one_line_exit_2(code, err, match):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("heta-fast: error:"), err
    assert match in lines[0] and "Traceback" not in err


# ----------------------------------------------------------------------------- silent misuse
def test_a_mapping_item_is_read_by_its_field_names_not_unpacked_into_its_keys(attr):
    (res,) = attr.attribute_many([{"prompt": PROMPT, "target": TARGET}])
    assert res.ok and res.context_tokens == ["w5", "w6", "w7", "w8"] and res.target_tokens == ["w9"]
    assert torch.equal(res.scores, attr.attribute(PROMPT, TARGET).scores)
    (res,) = attr.attribute_many([{"target": TARGET, "prompt": PROMPT}])  # order of the keys is irrelevant
    assert res.ok and res.target_tokens == ["w9"]


@pytest.mark.parametrize("item,match", [
    ("ab", "got str 'ab'"),
    ({"prompt": PROMPT, "target": TARGET, "messages": [{"role": "user", "content": "hi"}]},
     "exactly one of 'prompt' and 'messages'"),
    ({"prompt": PROMPT, "target": TARGET, "targt": TARGET}, "unknown request fields ['targt']"),
    ({"prompt": PROMPT}, "lacks 'target'"),
    ((PROMPT,), "2 items"),
    ((PROMPT, TARGET, TARGET), "2 items"),
    (7, "got int 7"),
])
def test_items_of_no_accepted_form_fail_alone_and_name_what_was_given(attr, item, match):
    out = list(attr.attribute_many([(PROMPT, TARGET), item, (PROMPT, TARGET)]))
    assert [r.ok for r in out] == [True, False, True]
    assert out[1].error_type == "InputError" and match in out[1].message
    assert torch.equal(out[0].scores, out[2].scores)


def test_attribute_many_refuses_a_lone_request_or_text_at_the_call(attr):
    for requests in ({"prompt": PROMPT, "target": TARGET}, "w5 w6", b"w5"):
        with pytest.raises(InputError, match="iterable of requests"):
            attr.attribute_many(requests)
    with pytest.raises(ConfigError, match="config must be a HETAConfig"):
        attr.attribute_many([(PROMPT, TARGET)], config={"beta": 1.0})


def test_attribute_dataset_refuses_bad_arguments_at_the_call(attr):
    """A config, ``generate`` or ``records`` it cannot use raises when called, not as a failure row
    per record (or never: ``generate=0`` used to be read as "no generation")."""
    records = [{"id": "a", "prompt": PROMPT, "target": TARGET}]
    with pytest.raises(ConfigError, match="config must be a HETAConfig"):
        attr.attribute_dataset(records, config={"beta": 1.0})
    with pytest.raises(ConfigError, match="layer_subset"):
        attr.attribute_dataset(records, config=HETAConfig(layer_subset=9))
    for generate, shown in ((0, "int 0"), (-1, "int -1"), (True, "bool True"), (1.5, "float 1.5")):
        with pytest.raises(InputError, match=f"generate must be an integer >= 1; got {shown}"):
            attr.attribute_dataset(records, generate=generate)
    for bad in ("abc", 5, {"id": "a", "prompt": PROMPT}):
        with pytest.raises(InputError, match="attribute_dataset takes an iterable of records"):
            attr.attribute_dataset(bad)
    [(key, result)] = list(attr.attribute_dataset(records))
    assert key == "a" and result.ok


def test_scores_that_overflow_blame_the_weights_not_the_input(attr):
    with pytest.raises(NonFiniteError, match=r"the scores are not finite with beta=0.5 and gamma=1e\+308 "
                                             r"\(the components are finite\)"):
        attr.attribute(PROMPT, TARGET, config=HETAConfig(gamma=1e308, components=("flow", "information")))


def test_a_progress_that_is_not_callable_is_refused_before_the_work(attr, monkeypatch):
    monkeypatch.setattr(type(attr), "_attribute", lambda *a, **k: pytest.fail("the work started"))
    with pytest.raises(ConfigError, match="progress must be a callable receiving ProgressEvents, or None; got int"):
        attr.attribute(PROMPT, TARGET, progress=5)
    with pytest.raises(ConfigError, match="progress must be a callable"):
        attr.generate_and_attribute(PROMPT, max_new_tokens=1, progress="bar")


@pytest.mark.parametrize("ids,match", [
    (b"The capital", "got bytes b'The capital'"),
    ([5.7, 6.2], "element 0 is float 5.7"),
    ([True], "element 0 is bool True"),
    ([5, [6]], "element 1 is list [6]"),
    (torch.tensor([[5, 6, 7]]), "dtype int64 and shape (1, 3)"),
    (torch.tensor([5.0, 6.0]), "dtype float32"),
    (torch.tensor([True, False]), "dtype bool"),
    (torch.tensor(5), "shape ()"),
    (np.array([[5, 6]]), "shape (1, 2)"),
    (np.array([5.0, 6.0]), "dtype float64"),
    ({5, 6}, "got set"),
    (None, "got None"),
    (5, "got int 5"),
    ([5, 2**70], "outside the vocabulary"),
])
def test_token_ids_of_any_other_form_are_refused_naming_it(attr, ids, match):
    for prompt, target, what in ((ids, TARGET, "prompt"), (PROMPT, ids, "target")):
        with pytest.raises(InputError) as info:
            attr.attribute(prompt, target)
        assert f"the {what} " in str(info.value) and match in str(info.value)


def test_the_accepted_id_forms_give_the_same_result(attr):
    want = attr.attribute([5, 6, 7], [8]).scores
    for ids in ((5, 6, 7), range(5, 8), torch.tensor([5, 6, 7], dtype=torch.int32), np.array([5, 6, 7]),
                [np.int64(5), 6, torch.tensor(7)]):
        assert torch.equal(attr.attribute(ids, [8]).scores, want)


def test_from_json_refuses_a_non_finite_score(attr, tmp_path):
    d = attr.attribute(PROMPT, TARGET).to_dict()
    for bad in (float("nan"), float("inf")):
        d["scores"][0][2] = bad
        path = tmp_path / "r.json"
        path.write_text(json.dumps(d))
        with pytest.raises(ResultFormatError, match=rf"{path}: scores\[0\]\[2\] is .*: scores must be finite"):
            Attribution.from_json(path)


# ----------------------------------------------------------------------------- untyped errors
def test_invalid_utf8_on_the_command_line_is_one_line(tiny_model_dir, capsys):
    argv = [sys.executable.encode(), b"-m", b"heta_fast", b"attribute", b"--model", str(tiny_model_dir).encode(),
            b"--prompt", b"w1 \xff w2", b"--target", b"w3"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tiny_model_dir)  # a real process's argv
    _one_line_exit_2(proc.returncode, proc.stderr, "the prompt is not valid UTF-8 text (byte 0xff at character 3)")
    # Python decodes argv with os.fsdecode (surrogateescape): the same string, in this process.
    code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", "w1", "--target", os.fsdecode(b"w3 \xfe")])
    _one_line_exit_2(code, capsys.readouterr().err, "the target is not valid UTF-8 text (byte 0xfe at character 3)")


@pytest.mark.parametrize("extra,match", [
    (["--device", "nonsense"], "unknown device 'nonsense'"),
    (["--top", "-1"], "argument --top: must be an integer >= 0, got '-1'"),
    (["--seed", str(2**70)], "seed must be an integer in [0, 2**47 - 1]"),
    (["--num-probes", "2.5"], "argument --num-probes: invalid int value"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
])
def test_cli_option_errors_are_one_line(tiny_model_dir, capsys, extra, match):
    code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", "w1 w2", "--target", "w3"] + extra)
    _one_line_exit_2(code, capsys.readouterr().err, match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_only_machine_is_one_line(tiny_model_dir, capsys):
    code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", "w1", "--target", "w2", "--device", "cuda"])
    _one_line_exit_2(code, capsys.readouterr().err, "device 'cuda' is not available")
    with pytest.raises(ConfigError, match="cuda"):
        Attributor.from_pretrained(str(tiny_model_dir), device="cuda:0")


def test_api_errors_are_typed(attr, tiny_model_dir):
    with pytest.raises(InputError, match=r"lone surrogate U\+D800"):
        attr.attribute("w5 \ud800 w6", TARGET)
    for components in (None, 5, [["flow"]]):
        with pytest.raises(ConfigError, match="component"):
            HETAConfig.from_dict({"components": components})
    with pytest.raises(ConfigError, match="unknown device 'nonsense'"):
        Attributor.from_pretrained(str(tiny_model_dir), device="nonsense")
    with pytest.raises(ConfigError, match="got int 123"):
        Attributor.from_pretrained(123)
    with pytest.raises(ConfigError, match="model name is empty"):
        Attributor.from_pretrained("")
    for n in (0, -1, 2.0, True, "3"):
        with pytest.raises(InputError, match="max_new_tokens must be an integer >= 1"):
            attr.generate_and_attribute(PROMPT, max_new_tokens=n)
    with pytest.raises(InputError, match="the model's maximum is 64"):
        attr.generate_and_attribute(PROMPT, max_new_tokens=100)
    with pytest.raises(InputError, match="generation arguments \\['num_beams'\\] refused"):
        attr.generate_and_attribute(PROMPT, max_new_tokens=2, num_beams=0)
    for seed in (2**70, -1):
        with pytest.raises(ConfigError, match="seed"):
            HETAConfig(seed=seed)


def test_layer_subset_beyond_the_model_is_refused_before_any_work(attr, monkeypatch):
    monkeypatch.setattr(attr.adapter, "capture", lambda *a, **k: pytest.fail("the forward pass ran"))
    with pytest.raises(ConfigError, match="layer_subset=999 but the model has only 2 decoder layers"):
        attr.attribute(PROMPT, TARGET, config=attr.config.replace(layer_subset=999))


def _result_text(attr) -> str:
    return attr.attribute(PROMPT, TARGET).to_json()


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t[:-3], "not valid JSON"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "context_tokens"}), "context_tokens"),
    (lambda t: json.dumps({**json.loads(t), "context_tokens": ["a"]}), "scores[0] must be a list of 1 numbers"),
    (lambda t: json.dumps({**json.loads(t), "scores": "high"}), "scores must be a list of 1 rows"),
    (lambda t: json.dumps([json.loads(t)]), "expected a JSON object, got a list of 1"),
    (lambda t: json.dumps({**json.loads(t), "format_version": 99}), "format_version 99"),
    (lambda t: json.dumps({**json.loads(t), "target_ids": [1.5]}), "target_ids must be a list"),
    (lambda t: json.dumps({**json.loads(t), "config": []}), "config must be an object"),
])
def test_every_from_json_failure_is_one_result_format_error_naming_the_file(attr, tmp_path, mutate, match):
    path = tmp_path / "r.json"
    path.write_text(mutate(_result_text(attr)))
    with pytest.raises(ResultFormatError) as info:
        Attribution.from_json(path)
    assert str(info.value).startswith(f"{path}: ") and match in str(info.value)


def test_from_json_of_unreadable_files(tmp_path):
    (tmp_path / "latin1.json").write_bytes(b'{"a": "caf\xe9"}')
    for path, match in ((tmp_path / "latin1.json", "latin1.json: not UTF-8 text (byte 0xe9 on line 1)"),
                        (tmp_path / "missing.json", "missing.json: No such file"), (tmp_path, "Is a directory")):
        with pytest.raises(ResultFormatError) as info:
            Attribution.from_json(path)
        assert match in str(info.value)


def test_a_lone_surrogate_in_an_eval_record_fails_that_record_and_the_run_goes_on(attr, tmp_path):
    from heta_fast.evaluate.data import load_jsonl
    from heta_fast.evaluate.runner import EvalSettings, run_evaluation

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([json.dumps({"id": "a", "prompt": PROMPT, "target": TARGET}),
                               '{"id": "bad", "prompt": "w5 \\ud800 w6", "target": "w7"}',
                               json.dumps({"id": "c", "prompt": text(10, 11), "target": text(12)})]))
    settings = EvalSettings(samples=2, metrics=("dsa", "f1"))
    for _ in range(2):  # the rerun does not stop at the same record either
        store = run_evaluation(attr, load_jsonl(data), ["rollout"], tmp_path / "r.json", settings, progress=False)
    status = {r["example"]: r["ok"] for r in store.records}
    assert status == {"a": True, "bad": False, "c": True} and len(store.records) == 3
    assert "lone surrogate U+D800" in next(r["error"] for r in store.records if not r["ok"])


def test_a_terminal_that_cannot_encode_the_heatmap_gets_ascii_and_the_file_is_written(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    proc = subprocess.run([sys.executable, "-m", "heta_fast", "attribute", "--model", str(tiny_model_dir), "--prompt",
                           "w1 w2 w3", "--target", "w4", "--num-probes", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, encoding="cp1252", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Attribution.from_json(out).scores.shape == (1, 3)
    heatmap = proc.stdout.splitlines()[1]
    assert heatmap.startswith("w1") and heatmap.endswith("@") and "█" not in proc.stdout


def test_the_eval_table_prints_on_a_cp1252_terminal(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": text(5, 6, 7), "target": text(8), "support": text(6, 7), "distractor":
                                text(5)}))
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252"))  # as PYTHONIOENCODING=cp1252
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout", "--metrics",
                 "dsa", "--out", str(tmp_path / "r.json"), "--no-progress"])
    sys.stdout.flush()
    printed = raw.getvalue().decode("cp1252")
    assert code == 0 and "DSA ^" in printed and "rollout" in printed


@pytest.mark.parametrize("content,match", [
    (b'{"prompt": "caf\xe9", "target": "w1"}\n', "not UTF-8 text (byte 0xe9 on line 1)"),
    (b"5\n", "each line must be a JSON object, got a number (5)"),
    (b'{"prompt": "w1 w2", "target": "w3", "gold": "w2"}\n', "'gold' must be a list"),
])
def test_eval_data_errors_are_one_line(tiny_model_dir, tmp_path, capsys, content, match):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "r.json")])
    _one_line_exit_2(code, capsys.readouterr().err, match)


def test_a_curated_record_that_is_a_bare_number_is_named(tmp_path):
    from heta_fast.evaluate.data import load_curated

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"examples": [5]}))
    with pytest.raises(InputError, match="example 0: must be a JSON object, got a number \\(5\\)"):
        load_curated(path)


def test_an_unreachable_hub_is_reported_at_once_in_one_line(monkeypatch):
    import huggingface_hub

    calls = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        Attributor.from_pretrained("some-org/some-model", device="cpu")
    assert time.perf_counter() - start < 2 and calls == [5.0]
    assert "not in the local Hugging Face cache and the hub" in str(info.value) and "\n" not in str(info.value)


def test_a_folder_without_a_tokenizer_is_named_in_a_whole_sentence(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match=r"has no tokenizer \(none of tokenizer.json, .*\); save one into it"):
        Attributor.from_pretrained(str(folder))


def test_a_tiny_memory_budget_is_stated_in_bytes_not_zero_mib(attr):
    with pytest.raises(MemoryBudgetError) as info:
        attr.attribute(PROMPT, TARGET, config=HETAConfig(memory_budget=1000))
    assert "memory_budget=1000 bytes" in str(info.value) and "0 MiB" not in str(info.value)


def test_a_sketch_larger_than_the_memory_budget_is_refused_before_it_is_allocated(attr, tiny_model_dir, capsys,
                                                                                    monkeypatch):
    """Ω and Y of a rank-k sketch are k × tokens × d float64 each: a rank of 10⁵ would allocate
    gigabytes; it is a MemoryBudgetError from the estimate, before the sketch matrix is drawn."""
    from heta_fast.signals.curvature import estimators

    monkeypatch.setattr(estimators, "sketch_matrix", lambda *a, **k: pytest.fail("the sketch was allocated"))
    huge = HETAConfig(estimator="sketch", sketch_rank=100_000, components=("curvature",))
    with pytest.raises(MemoryBudgetError, match="the sketch of rank 100000 over 4 tokens holds about"):
        attr.estimate(PROMPT, TARGET, config=huge)
    with pytest.raises(MemoryBudgetError, match="lower sketch_rank"):
        attr.attribute(PROMPT, TARGET, config=huge)
    [failed] = attr.attribute_many([(PROMPT, TARGET)], config=huge)
    assert failed.error_type == "MemoryBudgetError"
    code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--target", TARGET, "-q",
                 "--estimator", "sketch", "--sketch-rank", "100000"])
    _one_line_exit_2(code, capsys.readouterr().err, "the sketch of rank 100000")


# ----------------------------------------------------------------------------- before the work
@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_output_paths_are_checked_before_the_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch, flag):
    monkeypatch.setattr(Attributor, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    cases = [(tmp_path / "missing" / "r.out", "the folder"), (tmp_path, "is a directory")]
    if os.path.isdir("/proc/self"):
        cases.append(("/proc/self/heta.out", "/proc/self/heta.out cannot be written"))
    for path, match in cases:
        code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", "w1", "--target", "w2", flag, str(path)])
        err = capsys.readouterr().err
        _one_line_exit_2(code, err, match)
        assert f"{flag} file {path}" in err


def test_json_and_html_into_one_file_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr(Attributor, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "r.out"
    code = main(["attribute", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--target", TARGET,
                 "--json", str(out), "--html", str(tmp_path / "." / "r.out")])
    _one_line_exit_2(code, capsys.readouterr().err, "--json and --html name the same file")
    assert not out.exists()


def test_eval_output_and_merge_paths_are_checked_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(Attributor, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "target": "w3"}))
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(data)]
    bad_results = tmp_path / "v99.json"
    bad_results.write_text(json.dumps({"format": "heta-fast-eval", "version": 99, "header": {}, "records": []}))
    for extra, match in ((["--out", str(tmp_path / "no" / "r.json")], "--out file"),
                         (["--out", str(tmp_path)], "is a directory"),
                         (["--out", str(tmp_path / "r.json"), "--markdown", str(tmp_path)], "--markdown file"),
                         (["--out", str(tmp_path / "r.json"), "--merge", str(tmp_path / "no.json")], "no such results"),
                         (["--out", str(tmp_path / "r.json"), "--merge", str(bad_results)], "version 99")):
        _one_line_exit_2(main(base + extra), capsys.readouterr().err, match)


def test_eval_markdown_naming_the_results_the_data_or_a_merged_file_is_refused_before_the_model_loads(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Attributor, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "target": "w3"}))
    shard = tmp_path / "s0.json"
    shard.write_text(json.dumps({"format": "heta-fast-eval", "version": 1, "header": {}, "records": []}))
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", "r.json"]
    for extra, flag in ((["--markdown", str(tmp_path / "r.json")], "--out"),
                        (["--markdown", "./d.jsonl"], "--data"),
                        (["--merge", str(shard), "--markdown", "s0.json"], "--merge")):
        _one_line_exit_2(main(base + extra), capsys.readouterr().err, f"--markdown and {flag} name the same file")
    assert json.loads(data.read_text()) == {"prompt": "w1 w2", "target": "w3"}
    assert not (tmp_path / "r.json").exists()


def test_quiet_leaves_one_line_for_a_file_that_is_not_gguf(tmp_path, capsys, monkeypatch):
    """-q: the model cache's "converting ..." notice is silenced too, so the error is the only line."""
    monkeypatch.setenv("HETA_FAST_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(range(256)) * 4)
    argv = ["attribute", "--model", str(bad), "--prompt", PROMPT, "--target", TARGET]
    _one_line_exit_2(main([*argv, "-q"]), capsys.readouterr().err, "not a GGUF file")
    main(argv)
    assert "[heta-fast] converting bad.gguf" in capsys.readouterr().err  # shown without -q


def test_a_token_cannot_drive_the_terminal_in_the_heatmap(attr):
    """Control characters in a token (ESC, CR) are shown escaped, never written raw."""
    d = attr.attribute(PROMPT, TARGET).to_dict()
    d["context_tokens"][0] = "\x1b[31mred\r"
    for color in (False, True):
        out = io.StringIO()
        Attribution.from_dict(d).show(file=out, color=color)
        heatmap = out.getvalue().splitlines()[1]
        assert "\\x1b[31mred\\x0d" in heatmap and "\r" not in heatmap
        assert "\x1b[31mred" not in heatmap  # (color=True adds its own escapes around tokens, not this one)


def test_a_role_or_a_method_name_cannot_drive_the_terminal_either(attr):
    """A chat role and the method name (the caller's text, or a loaded file's) are shown as
    visibly as tokens: ESC and CR escaped, never written raw."""
    d = attr.attribute(PROMPT, TARGET).to_dict()
    d["messages"] = [{"role": "w9\x1b[2J\x1b[31m", "content": PROMPT}]  # as a chat's result holds them
    d["segments"] = [0] * len(d["context_tokens"])
    d["method"] = "heta\x1b[2J\r"
    for color in (False, True):
        out = io.StringIO()
        Attribution.from_dict(d).show(file=out, color=color)
        text = out.getvalue()
        assert "\\x1b[2J" in text and "w9\\x1b[2J\\x1b[31m: " in text and "heta\\x1b[2J\\x0d" in text
        assert "\x1b[2J" not in text and "\r" not in text


def test_generation_arguments_that_change_the_output_are_handled_or_refused(attr):
    plain = attr.generate_and_attribute(PROMPT, max_new_tokens=2)
    as_dict = attr.generate_and_attribute(PROMPT, max_new_tokens=2, return_dict_in_generate=True, output_scores=True)
    assert as_dict.target_ids == plain.target_ids  # the output object's sequences, attributed as usual
    with pytest.raises(InputError, match="must give one sequence to attribute; got a tensor of dtype int64 and shape "
                                         r"\(2, "):
        attr.generate_and_attribute(PROMPT, max_new_tokens=2, do_sample=True, num_return_sequences=2)


def test_output_and_input_paths_of_the_wrong_kind_are_typed_errors(attr):
    from heta_fast.errors import OutputError

    res = attr.attribute(PROMPT, TARGET)
    for bad in (None, 3, ""):
        with pytest.raises(OutputError, match="an output path must be a non-empty str or path"):
            res.to_html(bad)
    with pytest.raises(OutputError, match="got int 3"):
        res.to_json(3)
    for bad in ("", "   ", 3):
        with pytest.raises(ResultFormatError, match="from_json takes a path or JSON text"):
            Attribution.from_json(bad)


def test_topk_reads_integers_as_the_library_does_and_refuses_bools(attr):
    """topk's k and target: a NumPy integer is the integer it holds; a bool is refused (an
    InputError, not an IndexError from the tensor it would have indexed)."""
    res = attr.attribute(PROMPT, TARGET)
    assert res.topk(np.int64(2), target=np.int32(0)) == res.topk(2, target=0)
    for k, target in ((True, None), (2, True), (2, False), (2, 1), (2, 0.0)):
        with pytest.raises(InputError, match="must be"):
            res.topk(k, target=target)


def test_result_files_named_like_json_and_files_with_a_byte_order_mark_read(attr, tmp_path):
    """A path such as '{run}.json' is the file it names, not JSON text; a result file or a run's
    JSONL input that starts with a UTF-8 byte-order mark (as Windows editors write) reads."""
    from heta_fast.pipeline.readers import read_file

    res = attr.attribute(PROMPT, TARGET)
    path = tmp_path / "{run}.json"
    res.to_json(path)
    assert Attribution.from_json(str(path)).scores.tolist() == res.scores.tolist()
    marked = tmp_path / "bom.json"
    marked.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert Attribution.from_json(marked).scores.tolist() == res.scores.tolist()
    records = tmp_path / "r.jsonl"
    records.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "w1", "target": "w2"}\n')
    assert list(read_file(records)) == [{"id": "a", "prompt": "w1", "target": "w2"}]
    with pytest.raises(ResultFormatError, match="the JSON text: not valid JSON"):
        Attribution.from_json('{"format_version": 2,}')
    text = res.to_json()
    assert Attribution.from_json("\ufeff" + text).scores.tolist() == res.scores.tolist()
