"""Property-based tests (hypothesis) of the public entry points on a tiny model: every input gives
a valid result or one of the package's typed errors, never another exception, and never a result
for an input outside the accepted forms.

Accepted forms (written here independently of heta_fast/inputs.py): a prompt or target is a
``str`` of valid Unicode or token ids as a 1-D sequence of (non-bool) integers, a 1-D integer
tensor or a 1-D integer NumPy array; a batch item is a (prompt, target) tuple or list of two, or
a mapping with exactly the keys ``prompt`` and ``target``.
"""
import contextlib
import dataclasses
import io
import json
from functools import lru_cache

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from heta_fast import Attribution, Attributor, HETAConfig
from heta_fast.combine import TERM_SCALES
from heta_fast.config import INFORMATION_ESTIMATORS, SINK_MODES, SINK_TOKENS
from heta_fast.errors import ConfigError, HetaError, InputError, ResultFormatError
from heta_fast.precision import PRECISIONS
from heta_fast.result import FailedAttribution
from tests.tiny_models import VOCAB, WORDS, tiny_model, tiny_tokenizer

FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CHEAP = settings(FAST, max_examples=150)
FIELDS = [f.name for f in dataclasses.fields(HETAConfig)]


def _all_subclasses(cls):
    return {cls.__name__} | {n for sub in cls.__subclasses__() for n in _all_subclasses(sub)}


@lru_cache(maxsize=1)
def _attributor() -> Attributor:
    config = HETAConfig(components=("flow", "information"), max_batch=8)
    return Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), config)


# ----------------------------------------------------------------------------- strategies
words = st.lists(st.integers(0, VOCAB + 5), min_size=0, max_size=12).map(lambda ids: " ".join(f"w{i}" for i in ids))
any_text = st.one_of(words, st.text(max_size=20),
                     st.text(st.characters(codec="utf-8") | st.characters(categories=["Cs"]), max_size=6))
int_ids = st.lists(st.integers(-3, VOCAB + 3), max_size=10)
id_forms = st.one_of(
    int_ids, int_ids.map(tuple),
    st.integers(4, 40).map(lambda n: range(4, n)),
    int_ids.map(lambda x: torch.tensor(x, dtype=torch.long)),
    int_ids.map(lambda x: np.array(x, dtype=np.int64)),
)
junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8),
    st.lists(st.floats(allow_nan=True), min_size=1, max_size=4), st.lists(st.booleans(), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(4, 60), max_size=3), min_size=1, max_size=3),
    st.sets(st.integers(4, 60), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(1, 4).map(lambda n: torch.ones(1, n, dtype=torch.long) * 5),
    st.integers(1, 4).map(lambda n: torch.ones(n)), st.integers(1, 4).map(lambda n: torch.ones(n, dtype=torch.bool)),
    st.just(torch.tensor(5)), st.integers(1, 4).map(lambda n: np.ones(n)),
)
valid_ids = st.lists(st.integers(4, VOCAB - 1), min_size=1, max_size=8)
valid = st.one_of(valid_ids.map(lambda ids: " ".join(f"w{i}" for i in ids)), valid_ids,
                  valid_ids.map(lambda ids: torch.tensor(ids, dtype=torch.int32)))


def mostly(good, other):
    """``good`` two times in three, else ``other`` (a plain one_of would flatten both into equally likely
    branches, and the many kinds of junk would crowd out the valid inputs)."""
    return st.integers(0, 2).flatmap(lambda k: other if k == 0 else good)


side = mostly(valid, st.one_of(any_text, id_forms, junk))


def _is_text(x) -> bool:
    if not isinstance(x, str):
        return False
    try:
        x.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def accepted(x) -> bool:
    """The accepted forms of a prompt or a target, written out independently of the package."""
    if isinstance(x, str):
        return _is_text(x)
    if isinstance(x, torch.Tensor):
        return x.dim() == 1 and x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
    if isinstance(x, np.ndarray):
        return x.ndim == 1 and x.dtype.kind in "iu"
    if isinstance(x, (list, tuple, range)):
        return all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in x)
    return False


def _check_result(res: Attribution, prompt, target) -> None:
    assert isinstance(res, Attribution), res
    assert accepted(prompt) and accepted(target), (prompt, target)
    t, n = len(res.target_tokens), len(res.context_tokens)
    assert t >= 1 and n >= 1 and res.scores.shape == (t, n) and torch.isfinite(res.scores).all()
    if not isinstance(target, str):
        assert res.target_ids == [int(i) for i in target]
    if not isinstance(prompt, str):
        assert res.context_ids == [int(i) for i in prompt]


def _call(fn, *args, **kwargs):
    """fn's result, or the typed error it raised (any other exception fails the test)."""
    try:
        out = fn(*args, **kwargs)
    except HetaError as exc:
        out = exc
    event(type(out).__name__)  # --hypothesis-show-statistics: how often each outcome was reached
    return out


# ----------------------------------------------------------------------------- engine entry points
@FAST
@given(prompt=side, target=side, config=mostly(st.none(), st.one_of(
    st.deferred(lambda: call_kwargs).map(lambda kw: HETAConfig(**kw)), st.just({"beta": 1.0}))))
def test_attribute_gives_a_result_only_for_accepted_forms_else_a_typed_error(prompt, target, config):
    out = _call(_attributor().attribute, prompt, target, config=config)
    if isinstance(out, HetaError):
        if not (accepted(prompt) and accepted(target)):
            assert isinstance(out, (InputError, ConfigError)), out
        if isinstance(config, dict):
            assert isinstance(out, (InputError, ConfigError)), out
    else:
        assert config is None or isinstance(config, HETAConfig)
        _check_result(out, prompt, target)


def _item_form(item) -> bool:
    if isinstance(item, (tuple, list)):
        return len(item) == 2 and accepted(item[0]) and accepted(item[1])
    if isinstance(item, dict):
        return set(item) == {"prompt", "target"} and accepted(item["prompt"]) and accepted(item["target"])
    return False


items = mostly(st.one_of(st.tuples(side, side), st.tuples(side, side).map(list),
                         st.fixed_dictionaries({"prompt": side, "target": side})),
               st.one_of(st.fixed_dictionaries({"prompt": side, "target": side},
                                               optional={"messages": st.just([]), "x": st.just(1)}), side))


@FAST
@given(requests=st.lists(items, max_size=4))
def test_attribute_many_answers_every_item_in_order_with_results_or_typed_failures(requests):
    attr = _attributor()
    out = list(attr.attribute_many(requests))
    assert len(out) == len(requests)
    for res in out:
        event(type(res).__name__)
    typed = _all_subclasses(HetaError)
    for index, (item, res) in enumerate(zip(requests, out)):
        if isinstance(res, FailedAttribution):
            assert res.index == index and res.error_type in typed and not res.ok
            if not _item_form(item):
                assert res.error_type == "InputError"
        else:
            assert _item_form(item)
            prompt, target = (item["prompt"], item["target"]) if isinstance(item, dict) else item
            _check_result(res, prompt, target)


@FAST
@given(prompt=side, n=mostly(st.integers(1, 6), st.one_of(st.integers(-2, 70), st.floats(), st.booleans(), st.none(),
                                                          st.text(max_size=2))))
def test_generate_and_attribute_gives_a_result_or_a_typed_error(prompt, n):
    out = _call(_attributor().generate_and_attribute, prompt, max_new_tokens=n)
    if isinstance(out, HetaError):
        if not accepted(prompt) or not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            assert isinstance(out, InputError), out
        return
    assert accepted(prompt) and isinstance(n, int) and not isinstance(n, bool) and 1 <= n
    assert 1 <= len(out.target_tokens) <= n and torch.isfinite(out.scores).all()


# ----------------------------------------------------------------------------- configuration
values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 70), st.floats(), st.floats(0, 1), st.text(max_size=8),
    st.sampled_from(["flow", "curvature", "information", "probing", "exact", "sketch", "zero", "mean", "unk"]),
    st.lists(st.sampled_from(["flow", "curvature", "information", "magic"]), max_size=4),
    st.lists(st.integers(), max_size=2).map(tuple), st.integers(0, 5).map(np.int64), st.floats(0, 2).map(np.float32),
)


GOOD = {
    "beta": st.floats(0, 10), "gamma": st.floats(0, 10), "num_probes": st.integers(1, 3),
    "components": st.lists(st.sampled_from(["flow", "curvature", "information"]), min_size=1, max_size=3,
                           unique=True),
    "estimator": st.sampled_from(["exact", "probing", "sketch"]), "probing_patterns": st.integers(1, 4),
    "probing_repeats": st.integers(1, 3), "sketch_rank": st.integers(1, 8), "cuda_graphs": st.booleans(),
    "seed": st.integers(0, 2**47 - 1), "mask_scheme": st.sampled_from(["zero", "mean", "pad", "unk"]),
    "window_size": st.integers(0, 12), "window_overlap": st.floats(0, 0.9), "layer_subset": st.integers(0, 2),
    "use_fisher": st.booleans(), "memory_budget": st.integers(1, 2**40), "max_batch": st.integers(1, 64),
    "template_tokens": st.sampled_from(["condition", "attribute"]),
    "term_scale": st.sampled_from(TERM_SCALES),
    "sinks": st.sampled_from(SINK_MODES), "sink_threshold": st.floats(0.01, 1),
    "sink_token": st.sampled_from(SINK_TOKENS),
    "precision": st.sampled_from(PRECISIONS),
    "information_estimator": st.sampled_from(INFORMATION_ESTIMATORS), "information_rank": st.integers(1, 8),
    "information_span": st.integers(1, 64),
}
assert set(GOOD) == set(FIELDS)
good_kwargs = st.lists(st.sampled_from(FIELDS), unique=True, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: GOOD[k] for k in keys}))
# Per-call configs of the attribute test: the fields that change what runs, at small cost
# (layer_subset up to 3: one more than the tiny model's layers).
call_kwargs = st.fixed_dictionaries({}, optional={
    "components": GOOD["components"], "estimator": GOOD["estimator"], "beta": GOOD["beta"],
    "mask_scheme": GOOD["mask_scheme"], "seed": GOOD["seed"], "layer_subset": st.integers(0, 3),
    "information_estimator": GOOD["information_estimator"]})
mixed_kwargs = st.lists(st.sampled_from(FIELDS), unique=True, max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: mostly(GOOD[k], values) for k in keys}))


def _check_config(cfg) -> None:
    assert isinstance(cfg, HETAConfig)
    d = cfg.to_dict()
    json.dumps(d, allow_nan=False)  # serialisable: every value a plain JSON value
    assert HETAConfig.from_dict(d) == cfg and HETAConfig.from_dict(json.loads(json.dumps(d))) == cfg


@CHEAP
@given(kwargs=mixed_kwargs)
def test_hetaconfig_is_valid_or_a_config_error(kwargs):
    out = _call(HETAConfig, **kwargs)
    if isinstance(out, HetaError):
        assert isinstance(out, ConfigError), out
    else:
        _check_config(out)


@CHEAP
@given(d=mostly(mixed_kwargs, st.one_of(st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), values,
                                                         max_size=3), values)))
def test_hetaconfig_from_dict_is_valid_or_a_config_error(d):
    out = _call(HETAConfig.from_dict, d)
    if isinstance(out, HetaError):
        assert isinstance(out, ConfigError), out
    else:
        _check_config(out)


# ----------------------------------------------------------------------------- results files
@lru_cache(maxsize=1)
def _valid_result() -> dict:
    return _attributor().attribute("w5 w6 w7", "w8 w9").to_dict()


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=8)


@st.composite
def result_texts(draw):
    d = json.loads(json.dumps(_valid_result()))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(d) + ["extra"]))
        action = draw(st.sampled_from(["set", "delete", "row", "cell"]))
        if action == "delete":
            d.pop(key, None)
        elif action == "set":
            d[key] = draw(json_values)
        elif isinstance(d.get(key), list) and d[key]:
            row = draw(st.integers(0, len(d[key]) - 1))
            if action == "row":
                d[key][row] = draw(json_values)
            elif isinstance(d[key][row], list) and d[key][row]:
                d[key][row][draw(st.integers(0, len(d[key][row]) - 1))] = draw(json_values)
    return json.dumps(d)


@CHEAP
@given(text=st.one_of(result_texts(), json_values.map(json.dumps), st.text(max_size=30).map(lambda t: "{" + t)))
def test_from_json_gives_a_valid_result_or_a_result_format_error(text):
    out = _call(Attribution.from_json, text)
    if isinstance(out, HetaError):
        assert isinstance(out, ResultFormatError), out
        assert "\n" not in str(out)
        return
    t, n = len(out.target_tokens), len(out.context_tokens)
    assert out.scores.shape == (t, n) and torch.isfinite(out.scores).all()
    for name in ("flow", "curvature", "information"):
        value = getattr(out, name)
        assert value is None or (value.shape == (t, n) and torch.isfinite(value).all())
    assert all(isinstance(x, str) for x in out.context_tokens + out.target_tokens)
    assert Attribution.from_json(out.to_json()).to_dict() == out.to_dict()


# ----------------------------------------------------------------------------- command line
numbers = st.one_of(st.integers(-5, 2**70), st.floats()).map(str)
CLI_VALUES = {
    "--model": st.sampled_from(["smollm2-135m", "", "org/name", "x.gguf"]), "--prompt": any_text, "--target": any_text,
    "--top": st.integers(-2, 9).map(str), "--beta": numbers, "--gamma": numbers, "--seed": numbers,
    "--components": st.sampled_from(["flow", "flow,curvature", "flow,magic", ""]),
    "--estimator": st.sampled_from(["exact", "probing", "sketch", "magic"]), "--num-probes": numbers,
    "--window-size": numbers, "--window-overlap": st.floats(-1, 2).map(str), "--mask-scheme": st.sampled_from(
        ["zero", "unk", "blank"]), "--dtype": st.sampled_from(["float32", "float64", "int8"]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:3", "nonsense", "meta"]), "--json": st.just("o.json"),
    "--data": st.just("d.jsonl"), "--out": st.just("r.json"), "--methods": st.sampled_from(["heta", "ig,magic"]),
    "--limit": numbers, "--samples": numbers, "--fractions": st.sampled_from(["0.1,0.2", "x"]),
    "--shard": st.sampled_from(["0/2", "3/2"]), "--metrics": st.sampled_from(["dsa", "nope"]),
}


@st.composite
def argvs(draw):
    command = draw(st.sampled_from(["attribute", "attribute", "demo", "eval", "eval", "nope"]))
    keys = draw(st.lists(st.sampled_from(sorted(CLI_VALUES)), unique=True, max_size=6))
    if command == "attribute" and draw(st.integers(0, 4)):
        keys = ["--prompt", "--target"] + [k for k in keys if k not in ("--prompt", "--target")]
    if command == "eval" and draw(st.integers(0, 4)):
        keys = ["--data", "--out"] + [k for k in keys if k not in ("--data", "--out")]
    argv = [command] + [x for k in keys for x in (k, draw(CLI_VALUES[k]))]
    if draw(st.integers(0, 4)) == 0:  # and now and then a stray token somewhere
        argv.insert(draw(st.integers(0, len(argv))), draw(st.text(max_size=4)))
    return argv


@CHEAP
@given(argv=argvs())
def test_the_cli_parser_gives_options_or_a_one_line_usage_error(argv):
    from heta_fast.cli import build_parser
    from heta_fast.cli_args import config_from_args, load_args

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            args = None
            assert exc.code in (0, 2)
            if exc.code == 2:
                lines = err.getvalue().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("heta-fast: error: "), err.getvalue()
    if args is None:
        return
    for step in (config_from_args, load_args):
        out = _call(step, args)
        assert not isinstance(out, HetaError) or isinstance(out, ConfigError) or (
            isinstance(out, InputError) and "model name" in str(out)), out
        if step is config_from_args and not isinstance(out, HetaError):
            _check_config(out)


# ----------------------------------------------------------------------------- chat messages
@lru_cache(maxsize=1)
def _chat_attributor() -> Attributor:
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}[BOS] {{ m['role'] }} {{ m['content'] }} [EOS] {% endfor %}[BOS]"
    return Attributor(tiny_model("llama", dtype=torch.float32), tok, HETAConfig(components=("flow",)))


def accepted_messages(m) -> bool:
    """The accepted form of chat messages, written out independently of the package."""
    if not isinstance(m, list) or not m:
        return False
    for x in m:
        if not (isinstance(x, dict) and set(x) == {"role", "content"} and _is_text(x["role"]) and x["role"].strip()
                and _is_text(x["content"])):
            return False
    return any(x["content"].strip() for x in m)


message = st.fixed_dictionaries({"role": mostly(st.sampled_from(["user", "system"]), any_text),
                                 "content": mostly(words, st.one_of(any_text, junk))},
                                optional={"name": st.just("x")})
messages = mostly(st.lists(message, min_size=1, max_size=3), st.one_of(junk, any_text, st.just([])))


@FAST
@given(messages=messages, target=side)
def test_attribute_messages_gives_a_result_only_for_accepted_forms_else_a_typed_error(messages, target):
    out = _call(_chat_attributor().attribute, messages=messages, target=target)
    if isinstance(out, HetaError):
        if not (accepted_messages(messages) and accepted(target)):
            assert isinstance(out, InputError), out
        return
    assert accepted_messages(messages) and accepted(target), (messages, target)
    assert out.messages == messages and len(out.segments) == len(out.context_tokens)
    contents = [m["content"] for m in messages]
    # Each message's marked tokens are exactly its words (the tiny tokenizer splits on spaces).
    for i, content in enumerate(contents):
        marked = [t for t, s in zip(out.context_tokens, out.segments) if s == i]
        assert marked == [w if w in WORDS else "[UNK]" for w in content.split()], (content, marked)
