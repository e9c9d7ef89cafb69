"""The request schema accepts exactly what the library accepts: no value of another JSON type is
converted (pydantic's lax mode read ``true`` as the id 1, ``"0.7"`` as 0.7, ``3.0`` as 3, ``"yes"``
as True), and nothing the library takes is refused (an integer weight, one component name).

Checked against the library itself, without a model: ``HETAConfig`` for the options, the
engine's token-id and ``max_new_tokens`` rules for the inputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("pydantic")
from pydantic import ValidationError  # noqa: E402

from heta_fast import HETAConfig  # noqa: E402
from heta_fast.client import OPTION_FIELDS  # noqa: E402
from heta_fast.errors import ConfigError, InputError  # noqa: E402
from heta_fast.inputs import as_token_ids, check_max_new_tokens  # noqa: E402
from heta_fast.service.schema import AttributionRequest, EngineOptions, shown  # noqa: E402

# JSON values of every type, and the kinds of wrong ones a client sends: numbers as text, floats
# for counts, bools for numbers, "yes" for a bool, ids as text.
VALUES = [True, False, 0, 1, 2, 3, 0.5, 0.7, 1.0, 3.0, -1, "1", "0.7", "3", "yes", "true", "probing", "flow",
          ["flow"], ["flow", "curvature"], ["flow", 1], [1], [], {}]


def _from_json(model, body: dict):
    """``model`` validated as the service validates a request: from the parsed JSON body."""
    return model.model_validate(json.loads(json.dumps(body)))


def _library(field: str, value):
    """The library's config with ``field=value``, or None when it refuses it."""
    try:
        return HETAConfig(**{field: value})
    except ConfigError:
        return None


def _service(field: str, value):
    """The config a request with ``options: {field: value}`` runs with (as Admission builds it), or None
    when it is refused (422: by the schema or by HETAConfig)."""
    try:
        return HETAConfig().replace(**_from_json(EngineOptions, {field: value}).changes())
    except (ValidationError, ConfigError):
        return None


@pytest.mark.parametrize("field", OPTION_FIELDS)
def test_options_accept_exactly_the_library_configurations(field):
    for value in [*VALUES, HETAConfig().to_dict()[field]]:
        assert _service(field, value) == _library(field, value), (field, value)


@pytest.mark.parametrize("options, message", [
    ({"beta": "0.7"}, "Input should be a valid number"),
    ({"beta": True}, "Input should be a valid number"),
    ({"num_probes": 3.0}, "Input should be a valid integer"),
    ({"use_fisher": "yes"}, "Input should be a valid boolean"),
    ({"use_fisher": 1}, "Input should be a valid boolean"),
    ({"estimator": 1}, "Input should be a valid string"),
    ({"components": ["flow", 1]}, "must be a component name or a list of them; element 1 is 1"),
])
def test_options_of_another_type_are_refused(options, message):
    with pytest.raises(ValidationError) as exc:
        _from_json(EngineOptions, options)
    assert exc.value.errors()[0]["msg"] == message


def test_an_integer_weight_is_a_float_as_in_the_library():
    assert HETAConfig(beta=1).beta == 1.0
    assert _from_json(EngineOptions, {"beta": 1, "gamma": 0}).changes() == {"beta": 1.0, "gamma": 0.0}


def _library_ids(value) -> bool:
    try:
        as_token_ids(value, "prompt", 1000)
    except InputError:
        return False
    return True


# (Ids out of the vocabulary are the engine's to refuse, after the schema: Admission.)
IDS = [[4, 5], [4, True], [True], ["4", "5"], [4, 5.0], [4.0], [[4]], [None], []]


@pytest.mark.parametrize("field", ["prompt", "target"])
@pytest.mark.parametrize("value", IDS, ids=str)
def test_token_ids_are_the_library_token_ids(field, value):
    try:
        parsed = getattr(_from_json(AttributionRequest, {field: value}), field)
    except ValidationError:
        parsed = None
    assert (parsed is not None) == _library_ids(value)
    if parsed is not None:
        assert parsed == value and all(type(i) is int for i in parsed)


@pytest.mark.parametrize("value, message", [
    ([4, True], "element 1 is true"), (["4", "5"], 'element 0 is "4"'), ([4, 5.0], "element 1 is 5.0"),
    (5, "got 5"), ({"ids": [4]}, 'got {"ids": [4]}'),
])
def test_bad_ids_are_refused_naming_the_element(value, message):
    with pytest.raises(ValidationError) as exc:
        _from_json(AttributionRequest, {"prompt": value})
    (error,) = exc.value.errors()  # one error naming the field, not one per member of the union
    assert error["loc"] == ("prompt",)
    assert error["msg"] == f"must be text or a list of integer token ids; {message}"


@pytest.mark.parametrize("value", [2, 2.0, "2", True])
def test_generate_is_the_library_max_new_tokens(value):
    try:
        check_max_new_tokens(value, 1, None)
        library = True
    except InputError:
        library = False
    try:
        parsed = _from_json(AttributionRequest, {"generate": value}).generate
    except ValidationError:
        parsed = None
    assert (parsed is not None) == library, value
    if parsed is not None:
        assert parsed == value and type(parsed) is type(value)


def test_shown_is_short_json():
    assert shown(True) == "true" and shown("0.7") == '"0.7"' and shown("a\nb") == '"a\\nb"'
    assert len(shown(list(range(1000)))) == 60
    assert shown(10**5000) == "int too long to show"  # more digits than Python writes as text


def test_the_documented_options_are_the_schema_options():
    """docs/service.md's "Request options" table names exactly the options a request may set."""
    doc = (Path(__file__).parents[2] / "docs" / "service.md").read_text(encoding="utf-8")
    section = doc.split("\n## Request options\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(EngineOptions.model_fields)
