import pytest

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
    (dict(dtype="int8"), "dtype"),
    (dict(memory_budget=0), "memory_budget"),
    (dict(seed=1.5), "seed"),
])
def test_bad_values_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HETAConfig(**kwargs)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        HETAConfig(beta=-1)


def test_windows_apply_to_every_component():
    cfg = HETAConfig(window_size=512, window_overlap=0.5)
    assert cfg.window_size == 512 and "curvature" in cfg.components and "information" in cfg.components


def test_defaults_round_trip_and_single_component_string():
    cfg = HETAConfig(components="flow", beta=0.3)
    assert cfg.components == ("flow",)
    assert HETAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown HETAConfig fields"):
        HETAConfig.from_dict({"betta": 1})
