import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.errors import ConfigError


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta=-0.1), "beta"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(beta="1"), "beta"),
    (dict(components=()), "non-empty"),
    (dict(components=("flow", "gradient")), "unknown component"),
    (dict(components=("flow", "flow")), "duplicates"),
    (dict(num_probes=0), "num_probes"),
    (dict(num_probes=2.5), "num_probes"),
    (dict(estimator="magic"), "estimator"),
    (dict(probing_patterns=0), "probing_patterns"),
    (dict(probing_repeats=1.5), "probing_repeats"),
    (dict(sketch_rank=0), "sketch_rank"),
    (dict(cuda_graphs=1), "cuda_graphs"),
    (dict(mask_scheme="blank"), "mask_scheme"),
    (dict(window_overlap=1.0), "window_overlap"),
    (dict(window_size=-1), "window_size"),
    (dict(layer_subset=-1), "layer_subset"),
    (dict(max_batch=0), "max_batch"),
    (dict(use_fisher="yes"), "use_fisher"),
    (dict(memory_budget=0), "memory_budget"),
    (dict(seed=1.5), "seed"),
])
def test_bad_values_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HETAConfig(**kwargs)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        HETAConfig(beta=-1)


def test_window_size_changes_what_every_windowed_component_computes():
    # The window options reach both windowed terms: on a context longer than the window the
    # curvature and information terms change, the flow gate (never windowed) does not.
    from heta_fast import Attributor
    from tests.tiny_models import text, tiny_model, tiny_tokenizer

    attr = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=2, estimator="exact"))
    prompt, target = text(10, 3, 44, 7, 21, 9, 5, 17), text(30)
    plain = attr.attribute(prompt, target)
    windowed = attr.attribute(prompt, target, config=attr.config.replace(window_size=4, window_overlap=0.5))
    assert windowed.config["window_size"] == 4 and plain.config["window_size"] == 0
    assert not torch.allclose(windowed.curvature, plain.curvature)
    assert not torch.allclose(windowed.information, plain.information)
    torch.testing.assert_close(windowed.flow, plain.flow, rtol=0, atol=0)
    # The last window is the whole input: its last tokens keep exactly the unwindowed scores.
    torch.testing.assert_close(windowed.information[:, -2:], plain.information[:, -2:], rtol=0, atol=0)


def test_dtype_and_device_are_loading_arguments_not_configuration():
    with pytest.raises(ConfigError, match="unknown HETAConfig fields: 'dtype'"):
        HETAConfig(dtype="float64")
    with pytest.raises(ConfigError, match="unknown HETAConfig fields.*device"):
        HETAConfig.from_dict({"device": "cpu"})


def test_defaults_round_trip_and_single_component_string():
    cfg = HETAConfig(components="flow", beta=0.3)
    assert cfg.components == ("flow",)
    assert HETAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown HETAConfig fields"):
        HETAConfig.from_dict({"betta": 1})


def test_an_unknown_keyword_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="unknown HETAConfig fields: 'device'"):
        HETAConfig(device="cpu")  # a loading argument (Attributor.from_pretrained), not configuration
