"""Chat prompts: messages through the model's template, every token marked, template tokens
conditioning only by default; special tokens marked in every result (heta_fast/chat.py)."""
import pytest
import torch

from heta_fast import Attribution, Attributor, HETAConfig, InputError
from heta_fast.chat import check_messages, render_chat
from tests.tiny_models import text, tiny_model, tiny_tokenizer

# Word-level template: "[BOS] w<k> <content> [EOS]" per message, "[BOS] w9" to prompt the answer.
TEMPLATE = ("{% for m in messages %}[BOS] w{{ loop.index }} {{ m['content'] }} [EOS] {% endfor %}"
            "{% if add_generation_prompt %}[BOS] w9{% endif %}")
MESSAGES = [{"role": "system", "content": text(3, 4)}, {"role": "user", "content": text(5, 6, 7)}]
# Tokens of the rendering: [BOS] w1 w3 w4 [EOS] [BOS] w2 w5 w6 w7 [EOS] [BOS] w9
SEGMENTS = [-1, -1, 0, 0, -1, -1, -1, 1, 1, 1, -1, -1, -1]
SPECIAL = [True, False, False, False, True, True, False, False, False, False, True, True, False]
CONFIG = HETAConfig(estimator="exact", num_probes=2)


def chat_tokenizer(template: str = TEMPLATE):
    tok = tiny_tokenizer()
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), chat_tokenizer(), CONFIG)


def test_render_marks_each_token_with_its_message():
    tok = chat_tokenizer()
    chat = render_chat(tok, check_messages(MESSAGES))
    assert tok.convert_ids_to_tokens(chat.ids.tolist()) == ["[BOS]", "w1", "w3", "w4", "[EOS]", "[BOS]", "w2", "w5",
                                                           "w6", "w7", "[EOS]", "[BOS]", "w9"]
    assert chat.segments.tolist() == SEGMENTS


def test_chat_result_marks_and_conditions_on_template_tokens(attributor):
    res = attributor.attribute(messages=MESSAGES, target=text(8))
    assert res.segments == SEGMENTS and res.special == SPECIAL
    assert res.attributed == [s >= 0 for s in SEGMENTS]
    assert res.messages == MESSAGES and res.prompt.startswith("[BOS] w1 w3 w4")
    template = torch.tensor([s < 0 for s in SEGMENTS])
    for name in ("scores", "flow", "curvature", "information"):
        value = getattr(res, name)
        assert (value[:, template] == 0).all(), name
        assert (value[:, ~template] != 0).all(), name
    assert {i for i, _, _ in res.topk(20)} == {i for i, s in enumerate(SEGMENTS) if s >= 0}


def test_chat_equals_the_rendered_ids_as_a_prompt(attributor):
    """The chat context is the template's rendering: content columns equal those of the same ids
    given as a plain prompt; with template_tokens='attribute' every column does."""
    chat = attributor.attribute(messages=MESSAGES, target=text(8))
    ids = torch.tensor(chat.context_ids)
    plain = attributor.attribute(ids, text(8))
    content = torch.tensor(chat.attributed)
    for name in ("scores", "flow", "curvature", "information"):
        assert torch.equal(getattr(chat, name)[:, content], getattr(plain, name)[:, content]), name
    everything = attributor.attribute(messages=MESSAGES, target=text(8),
                                      config=CONFIG.replace(template_tokens="attribute"))
    assert torch.equal(everything.scores, plain.scores) and all(everything.attributed)
    assert plain.segments is None and plain.attributed == [True] * len(ids)
    assert plain.special == SPECIAL  # special tokens are marked whatever the prompt form


def test_generate_from_messages(attributor):
    res = attributor.generate_and_attribute(messages=MESSAGES, max_new_tokens=2)
    rendered = attributor.attribute(messages=MESSAGES, target=res.target_ids)
    assert res.segments == SEGMENTS and torch.equal(res.scores, rendered.scores)
    greedy = attributor.model.generate(torch.tensor([res.context_ids]), max_new_tokens=2, do_sample=False,
                                       pad_token_id=0)
    assert greedy[0, len(res.context_ids):].tolist() == res.target_ids


def test_estimate_takes_messages(attributor):
    phases = attributor.estimate(messages=MESSAGES, target=text(8))
    assert [p.phase for p in phases][0] == "forward"


def test_trimming_template_marks_the_stripped_content():
    tok = chat_tokenizer("{% for m in messages %}[BOS] {{ m['content'] | trim }} [EOS] {% endfor %}")
    chat = render_chat(tok, check_messages([{"role": "user", "content": "  " + text(5, 6) + "  "}]))
    assert chat.segments.tolist() == [-1, 0, 0, -1]


def test_roles_are_template_even_when_equal_to_content():
    """A content that also occurs in the template's text is found where the template put it."""
    tok = chat_tokenizer("{% for m in messages %}[BOS] {{ m['role'] }} {{ m['content'] }} [EOS] {% endfor %}")
    chat = render_chat(tok, check_messages([{"role": "w5", "content": "w5"}]))
    assert chat.segments.tolist() == [-1, -1, 0, -1]


@pytest.mark.parametrize("template, message", [
    ("{% for m in messages %}[BOS] {{ m['content'] | upper }} {% endfor %}", "transforms the message contents"),
    ("{% for m in messages %}{{ m['content'] }} {{ m['content'] }} {% endfor %}", "2 times"),
    ("{{ raise_exception('only user roles') }}", "refused the messages: only user roles"),
])
def test_templates_that_cannot_be_marked_are_refused(template, message):
    with pytest.raises(InputError, match=message):
        render_chat(chat_tokenizer(template), check_messages([{"role": "user", "content": text(5)}]))


def test_a_model_without_a_template_is_refused_before_any_work():
    att = Attributor(tiny_model("llama"), tiny_tokenizer(), CONFIG)
    with pytest.raises(InputError, match="has no chat template"):
        att.attribute(messages=MESSAGES, target=text(8))


@pytest.mark.parametrize("kwargs, message", [
    ({"messages": "hi"}, "messages must be a list"),
    ({"messages": []}, "at least one message"),
    ({"messages": [{"role": "user"}]}, "'content' must be text"),
    ({"messages": [{"role": "user", "content": 5}]}, "'content' must be text"),
    ({"messages": [{"role": "", "content": "w5"}]}, "'role' must be non-empty"),
    ({"messages": [{"role": "user", "content": "w5", "name": "x"}]}, "unknown fields"),
    ({"messages": [("user", "w5")]}, "must be a mapping"),
    ({"messages": [{"role": "user", "content": "  "}]}, "content is empty"),
    ({"messages": [{"role": "user", "content": "w5\udcff"}]}, "not valid UTF-8"),
    ({"messages": MESSAGES, "prompt": "w5"}, "not both"),
    ({}, "or chat messages given as messages=; got None"),
])
def test_bad_messages_are_input_errors(attributor, kwargs, message):
    with pytest.raises(InputError, match=message):
        attributor.attribute(target=text(8), **kwargs)


def test_marks_survive_json_and_word_aggregation(attributor, tmp_path):
    res = attributor.attribute(messages=MESSAGES, target=text(8))
    back = Attribution.from_json(res.to_json(tmp_path / "r.json"))
    for name in ("special", "attributed", "segments", "messages", "sinks", "architecture"):
        assert getattr(back, name) == getattr(res, name), name
    assert res.architecture == "LlamaForCausalLM"
    words = res.aggregate("words")
    # Words never cross a special token or a segment boundary: the marks pool exactly.
    assert sum(words.attributed) == 2 and words.segments.count(0) == 1 and words.segments.count(1) == 1
    assert torch.allclose(words.scores.sum(1), res.scores.sum(1))


def test_version_1_files_still_read(attributor):
    d = attributor.attribute(text(3, 4), text(8)).to_dict()
    for name in ("special", "attributed", "segments", "messages", "sinks", "architecture"):
        del d[name]
    d["format_version"] = 1
    old = Attribution.from_dict(d)
    assert old.special is None and old.attributed_indices() == list(range(len(old.context_tokens)))


def test_default_model_template_marks_the_user_content(default_attributor):
    """SmolLM2's template adds a system prompt and role markers: only the user's words are content."""
    tok = default_attributor.tokenizer
    content = "What is the capital of France?"
    chat = render_chat(tok, check_messages([{"role": "user", "content": content}]))
    marked = chat.ids[chat.segments == 0]
    assert tok.decode(marked) == content
    assert chat.segments[0] == -1 and tok.decode(chat.ids[-3:]).endswith("assistant\n")


def test_views_show_message_contents_after_their_roles(attributor):
    from heta_fast.render import render_html, render_terminal

    res = attributor.attribute(messages=MESSAGES, target=text(8))
    heatmap = render_terminal(res, color=False).splitlines()
    assert heatmap[1].startswith("system: w3") and heatmap[2].startswith("user: w5") and "[BOS]" not in heatmap[1]
    page = render_html(res)
    assert "<b>user: </b>" in page and "[BOS]" not in page and page.count("class='tok'") == 5
    everything = attributor.attribute(messages=MESSAGES, target=text(8),
                                      config=CONFIG.replace(template_tokens="attribute"))
    assert render_html(everything).count("class='tok'") == len(SEGMENTS)
