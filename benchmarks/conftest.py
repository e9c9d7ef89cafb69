"""Shared benchmark fixtures: the default model and prompts of a chosen token length.

Run: python -m pytest benchmarks -q --benchmark-columns=median,min,rounds
Benchmarks compare implementations side by side in one run; they assert nothing about time.
"""
import pytest

FILLER = ("Photosynthesis primarily occurs in the leaves of the plant, where chloroplasts capture light. "
          "The roots take up water and minerals from the soil, and the stem carries them upwards. ")


@pytest.fixture(scope="session")
def default_attributor():
    from heta_fast import Attributor, HETAConfig

    return Attributor.from_pretrained("smollm2-135m", config=HETAConfig())


def prompt_ids(tokenizer, n: int):
    """Exactly n token ids of natural text (the filler repeated and cut)."""
    ids = []
    while len(ids) < n:
        ids += tokenizer(FILLER, add_special_tokens=False)["input_ids"]
    return ids[:n]
