"""The heta-fast command line: output, files, and one-line errors without tracebacks."""
import re
import subprocess
import sys

import pytest
import torch

from heta_fast import Attribution
from heta_fast.cli import main


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_attribute_on_a_model_folder_writes_json_and_html(tiny_model_dir, tmp_path, capsys):
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    code, out, err = _run(["attribute", "--model", str(tiny_model_dir), "--prompt", "w1 w2 w3 w4",
                           "--target", "w5 w6", "--num-probes", "2", "--json", str(js), "--html", str(page)], capsys)
    assert code == 0, err
    assert "target 0: 'w5'" in out and "target 1: 'w6'" in out and "rank" in out
    res = Attribution.from_json(js)
    assert res.scores.shape == (2, 4) and res.context_tokens == ["w1", "w2", "w3", "w4"]
    assert "<span" in page.read_text()


@pytest.mark.parametrize("args,match", [
    (["--model", "nosuchmodel", "--prompt", "w1", "--target", "w2"], "unknown model 'nosuchmodel'"),
    (["--prompt", "", "--target", "w2"], "prompt is empty"),
    (["--prompt", "w1 w2", "--target", " "], "tokenises to no tokens"),
    (["--prompt", "w1 " * 80, "--target", "w2"], "maximum is 64"),
    (["--prompt", "w1", "--target", "w2", "--beta", "-1"], "beta must be"),
    (["--prompt", "w1", "--target", "w2", "--components", "flow,magic"], "unknown component"),
    (["--prompt", "w1", "--target", "w2", "--mask-scheme", "blank"], "mask_scheme"),
    (["--prompt", "w1", "--target", "w2", "--chat"], "has no chat template"),
    (["--prompt", "w1", "--target", "w2", "--system", "w3"], "--system needs --chat"),
    (["--prompt", "w1", "--target", "w2", "--generate", "2"], "not allowed with argument"),
    (["--prompt", "w1"], "one of the arguments --target --generate is required"),
    (["--prompt", "w1", "--generate", "0"], "--generate"),
    (["--prompt", "w1", "--target", "w2", "--template-tokens", "all"], "template_tokens"),
])
def test_user_errors_print_one_line_and_exit_2(tiny_model_dir, capsys, args, match):
    if "--model" not in args:
        args = ["--model", str(tiny_model_dir)] + args
    code, out, err = _run(["attribute"] + args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heta-fast: error:") and match in lines[0]
    assert "Traceback" not in err


def test_non_finite_model_output_is_one_line(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    for f in tiny_model_dir.iterdir():
        if "token" in f.name:
            (broken / f.name).write_bytes(f.read_bytes())
    code, _, err = _run(["attribute", "--model", str(broken), "--prompt", "w1 w2", "--target", "w3"], capsys)
    assert code == 2 and "non-finite" in err and len(err.strip().splitlines()) == 1


def test_help_works_everywhere():
    for args in ([], ["attribute"], ["demo"]):
        proc = subprocess.run([sys.executable, "-m", "heta_fast", *args, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: heta-fast" in proc.stdout


@pytest.mark.parametrize("command", [["attribute", "--prompt", "w1", "--target", "w2"], ["demo"],
                                     ["eval", "--data", "d.json", "--out", "o.json"],
                                     ["run", "--input", "in.jsonl", "--output", "out"], ["serve"]])
def test_every_attributing_command_takes_the_engine_options(command):
    from heta_fast.cli import build_parser
    from heta_fast.cli_args import config_from_args, load_args

    args = build_parser().parse_args(command + ["--estimator", "exact", "--num-probes", "3", "--window-size", "8",
                                                "--window-overlap", "0.25", "--seed", "4", "--dtype", "float64",
                                                "--device", "cpu", "--probing-patterns", "1", "--probing-repeats",
                                                "3", "--sketch-rank", "5"])
    cfg = config_from_args(args)
    assert (cfg.estimator, cfg.num_probes, cfg.window_size, cfg.window_overlap, cfg.seed) == ("exact", 3, 8, 0.25, 4)
    assert (cfg.probing_patterns, cfg.probing_repeats, cfg.sketch_rank) == (1, 3, 5)
    assert load_args(args) == {"dtype": "float64", "device": "cpu"}


def test_every_choice_of_the_configuration_is_in_the_help():
    """The option help is built from the configuration's names: each option lists exactly them."""
    from heta_fast import config
    from heta_fast.cli import build_parser
    from heta_fast.cli_args import one_of
    from heta_fast.combine import TERM_SCALES
    from heta_fast.precision import PRECISIONS

    helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices["attribute"]._actions}
    names = {"estimator": config.ESTIMATORS, "mask_scheme": config.MASK_SCHEMES, "precision": PRECISIONS,
             "information_estimator": config.INFORMATION_ESTIMATORS, "term_scale": TERM_SCALES,
             "sinks": config.SINK_MODES, "sink_token": config.SINK_TOKENS, "template_tokens": config.TEMPLATE_TOKENS}
    for dest, choices in names.items():
        parts = helps[dest].split(" | ")  # "intro: a (note) | b | c (note): outro"
        listed = [re.sub(r" \([^()]*\)$", "", parts[0]).split()[-1]] + [q.split()[0].rstrip(":") for q in parts[1:]]
        assert listed == list(choices), (dest, listed)
    assert one_of(("a", "b"), {"b": "why"}) == "a | b (why)"
    with pytest.raises(ValueError, match="unknown names"):
        one_of(("a", "b"), {"c": "gone"})


def test_cli_defaults_are_the_configs():
    from heta_fast import HETAConfig
    from heta_fast.cli import build_parser
    from heta_fast.cli_args import config_from_args

    assert config_from_args(build_parser().parse_args(["demo"])) == HETAConfig()


def test_chat_prompt_with_a_generated_answer(tiny_model_dir, tmp_path, capsys):
    """--chat sends the prompt (after --system) through the template; --generate attributes the
    greedy answer; the display shows message contents after their roles, the JSON the marks."""
    from transformers import AutoTokenizer

    folder = tmp_path / "chat-model"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = "{% for m in messages %}[BOS] {{ m['content'] }} [EOS] {% endfor %}[BOS]"
    tok.save_pretrained(folder)
    js = tmp_path / "chat.json"
    code, out, err = _run(["attribute", "--model", str(folder), "--chat", "--system", "w1 w2", "--prompt", "w3 w4",
                           "--generate", "2", "--num-probes", "2", "-q", "--json", str(js)], capsys)
    assert code == 0, err
    res = Attribution.from_json(js)
    assert res.messages == [{"role": "system", "content": "w1 w2"}, {"role": "user", "content": "w3 w4"}]
    assert res.segments == [-1, 0, 0, -1, -1, 1, 1, -1, -1] and len(res.target_tokens) == 2
    lines = out.splitlines()
    assert lines[1] == lines[1].lstrip() and lines[1].startswith("system: w1") and lines[2].startswith("user: w3")
