"""Shared benchmark fixtures: the default model and prompts of a chosen token length.

Run: python -m pytest benchmarks -q --benchmark-columns=median,min,rounds
Benchmarks compare implementations side by side in one run; they assert nothing about time.
"""
import time

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


def information_case(attributor, n: int):
    """The information term's inputs for n filler tokens and one target at the last, as the engine
    has them after its forward pass: (adapter, embeds [n, d], positions [1], zero masks [n, d],
    P_orig [1, V], prefix cache of [0, n - 1))."""
    import torch

    from heta_fast.model.capture import CaptureRequest
    from heta_fast.signals.information.prefix_cache import PrefixCache

    adapter = attributor.adapter
    x = adapter.embed(torch.tensor(prompt_ids(attributor.tokenizer, n)))
    positions = torch.tensor([n - 1])
    capture = adapter.capture(x, positions, CaptureRequest(key_values=True))
    return (adapter, x, positions, torch.zeros(n, x.shape[-1]), capture.log_probs,
            PrefixCache.from_kv(capture.kv, n - 1))


def best_time(fn, repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
