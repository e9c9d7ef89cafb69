"""Threads sharing one Attributor: each attribution runs alone on the model (heta_fast/model/exclusive.py)
and gives exactly the numbers it gives without company."""
import threading

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.exclusive import model_lock
from tests.tiny_models import tiny_model, tiny_tokenizer

REQUESTS = [([5, 9, 12, 7, 30, 8, 17, 21, 3, 14], [11]), ([6, 19, 22, 17, 40, 18, 27], [31, 4]),
            ([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [20])]


@pytest.mark.parametrize("precision", ["float32", "bfloat16-split"])
def test_threads_sharing_an_attributor_get_their_own_numbers(precision):
    attributor = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(),
                            HETAConfig(num_probes=2, precision=precision))
    alone = [attributor.attribute(p, t) for p, t in REQUESTS]
    start, out, errors = threading.Barrier(len(REQUESTS)), {}, []

    def work(i):
        try:
            start.wait(30)
            out[i] = [attributor.attribute(*REQUESTS[i]) for _ in range(2)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, want in enumerate(alone):
        for got in out[i]:
            for name in ("flow", "curvature", "information", "scores"):
                assert torch.equal(getattr(got, name), getattr(want, name)), (i, name)


def test_one_lock_per_model_whatever_the_adapter():
    model = tiny_model("llama", dtype=torch.float32)
    assert ModelAdapter(model).lock is model_lock(model) is ModelAdapter(model).lock
    assert model_lock(tiny_model("llama", dtype=torch.float32)) is not model_lock(model)


def test_close_waits_for_an_attribution_in_flight():
    model = tiny_model("llama", dtype=torch.float32)
    attributor = Attributor(model, tiny_tokenizer(), HETAConfig(num_probes=1))
    started, out = threading.Event(), {}

    def report(event):
        started.set()

    worker = threading.Thread(target=lambda: out.update(res=attributor.attribute(*REQUESTS[0], progress=report)))
    worker.start()
    assert started.wait(60)
    attributor.close()  # blocks until the attribution is done, then restores the model
    worker.join(60)
    assert torch.isfinite(out["res"].scores).all()
    assert model.config._attn_implementation != "heta_eager"
