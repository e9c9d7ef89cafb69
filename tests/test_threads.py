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


def _run_in_threads(jobs: dict) -> dict:
    """Start every job at once (one thread each) and return {name: result}, raising the first error."""
    start, out, errors = threading.Barrier(len(jobs)), {}, []

    def work(name):
        try:
            start.wait(30)
            out[name] = jobs[name]()
        except BaseException as exc:  # reported below
            errors.append((name, exc))

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


@pytest.mark.parametrize("precision", ["float32", "bfloat16-split"])
def test_threads_sharing_an_attributor_get_their_own_numbers(precision):
    attributor = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(),
                            HETAConfig(num_probes=2, precision=precision))
    alone = [attributor.attribute(p, t) for p, t in REQUESTS]
    out = _run_in_threads({i: lambda i=i: [attributor.attribute(*REQUESTS[i]) for _ in range(2)]
                           for i in range(len(REQUESTS))})
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


def test_evaluation_beside_attributions_gets_its_own_numbers():
    """Baselines, faithfulness metrics and decoding run the model too: threads running them beside
    HETA attributions on one Attributor get exactly their numbers alone (and HETA its own)."""
    from heta_fast.evaluate.baselines import integrated_gradients, occlusion, saliency
    from heta_fast.evaluate.metrics import soft_faithfulness
    from heta_fast.evaluate.sampling import sampled_answer

    attributor = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(num_probes=2))
    prompt, target = REQUESTS[0]
    ids = torch.tensor(prompt)
    row = torch.linspace(0.1, 1.0, len(prompt))
    jobs = {
        "heta": lambda: [attributor.attribute(p, t).scores for p, t in REQUESTS for _ in range(2)],
        "saliency": lambda: [saliency(attributor, prompt, target).scores for _ in range(3)],
        "occlusion": lambda: occlusion(attributor, prompt, target).scores,
        "ig": lambda: integrated_gradients(attributor, prompt, target, steps=4).scores,
        "soft": lambda: [soft_faithfulness(attributor.adapter, ids, target[0], row, samples=3).soft_nc
                         for _ in range(3)],
        "sampled": lambda: [sampled_answer(attributor.adapter, ids, 4, set(), temperature=1.3, seed=s).ids
                            for s in range(3)],
    }
    alone = {name: job() for name, job in jobs.items()}
    together = _run_in_threads(jobs)
    for name, want in alone.items():
        got = together[name]
        for a, b in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), name


def test_no_attribution_runs_inside_another_threads_noise_block():
    """The embedding-noise hook of the robustness study holds the model: an attribution in another
    thread waits for the block to end and sees the clean input."""
    from heta_fast.evaluate.robustness import perturbed_embeddings

    attributor = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(num_probes=1))
    prompt, target = REQUESTS[0]
    clean = attributor.attribute(prompt, target).scores
    noise = torch.randn(len(prompt), attributor.model.config.hidden_size)
    inside, out = threading.Event(), {}
    worker = threading.Thread(target=lambda: (inside.wait(30), out.update(res=attributor.attribute(prompt, target))))
    with perturbed_embeddings(attributor.model, noise):
        worker.start()
        inside.set()
        worker.join(0.5)
        assert worker.is_alive()  # waiting for the model
        noisy = attributor.attribute(prompt, target).scores  # the same thread may attribute inside
    worker.join(60)
    assert not torch.equal(noisy, clean) and torch.equal(out["res"].scores, clean)
