"""Progress events: every phase reports, and the announced totals are the work actually done."""
import io

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.progress import PhaseReporter, ProgressEvent, TerminalProgress
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT, TARGET = text(10, 3, 44, 7, 21, 9, 5, 17), text(30, 12)


def _events(**config):
    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(**config))
    events: list[ProgressEvent] = []
    result = attr.attribute(PROMPT, TARGET, progress=events.append)
    return result, events


@pytest.fixture
def advanced(monkeypatch):
    """Units each phase counted through ``advance`` (finish() alone would hide a wrong total)."""
    counted: dict[str, int] = {}
    original = PhaseReporter.advance

    def advance(self, units=1):
        counted[self.phase] = counted.get(self.phase, 0) + int(units)
        original(self, units)

    monkeypatch.setattr(PhaseReporter, "advance", advance)
    return counted


def _by_phase(events):
    out: dict[str, list[ProgressEvent]] = {}
    for e in events:
        out.setdefault(e.phase, []).append(e)
    return out


@pytest.mark.parametrize("config", [
    {},
    {"estimator": "exact", "num_probes": 2},
    {"estimator": "sketch", "sketch_rank": 5, "max_batch": 2},
    {"window_size": 4, "window_overlap": 0.5, "max_batch": 3},
    {"estimator": "exact", "num_probes": 3, "use_fisher": True},
], ids=["default", "exact", "sketch", "windows", "fisher"])
def test_every_phase_reports_and_the_totals_are_the_work_done(config, advanced):
    result, events = _events(**config)
    phases = _by_phase(events)
    assert list(phases) == ["forward", "flow", "curvature", "information"]
    for phase, evs in phases.items():
        assert evs[0].done == 0 and evs[-1].finished
        assert all(a.done <= b.done for a, b in zip(evs, evs[1:]))
        if phase != "forward":  # one pass, finished as a whole
            # The units counted as they were done reach the announced total exactly.
            assert advanced[phase] == evs[-1].total, phase
    assert phases["flow"][-1].total == 2 and phases["flow"][-1].unit == "layers"
    n_ctx = len(result.context_ids)
    windows = {} if "window_size" not in config else {"sizes": [4, 4, 4]}
    assert phases["information"][-1].total == sum(windows.get("sizes", [n_ctx]))
    assert phases["curvature"][-1].unit == "HVPs"


def test_without_a_callback_nothing_changes():
    with_cb, _ = _events()
    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig())
    torch.testing.assert_close(attr.attribute(PROMPT, TARGET).scores, with_cb.scores, rtol=0, atol=0)


def test_a_callback_that_raises_stops_the_attribution():
    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig())

    def stop(event):
        if event.phase == "curvature" and event.done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attr.attribute(PROMPT, TARGET, progress=stop)


def test_terminal_rendering_and_remaining_time():
    stream = io.StringIO()
    reporter = PhaseReporter(TerminalProgress(stream), "curvature", 4, "HVPs")
    reporter.advance(1)
    reporter.finish()
    text_out = stream.getvalue()
    assert "curvature: 0/4 HVPs" in text_out and "curvature: 4/4 HVPs\n" in text_out
    assert ProgressEvent("x", 1, 4, "u", 2.0).remaining_seconds == pytest.approx(6.0)
    assert ProgressEvent("x", 0, 4, "u", 2.0).remaining_seconds is None


@pytest.mark.parametrize("config", [{}, {"estimator": "exact", "num_probes": 2, "max_batch": 3},
                                    {"window_size": 4, "window_overlap": 0.5, "max_batch": 3}],
                         ids=["default", "exact", "windows"])
def test_the_estimate_announces_the_work_the_attribution_reports(config):
    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(**config))
    estimate = {e.phase: e for e in attr.estimate(PROMPT, TARGET)}
    events: list[ProgressEvent] = []
    attr.attribute(PROMPT, TARGET, progress=events.append)
    done = {e.phase: e for e in events if e.finished}
    assert set(estimate) == set(done)
    for phase, e in estimate.items():
        assert (e.units, e.unit) == (done[phase].total, done[phase].unit), phase
    assert estimate["information"].passes >= 1 and estimate["information"].peak_bytes > 0
    assert estimate["curvature"].peak_bytes > 0
    assert "curvature:" in estimate["curvature"].describe()


def test_the_estimate_checks_the_request_and_the_budget_before_any_work():
    from heta_fast.errors import InputError, MemoryBudgetError

    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig())
    with pytest.raises(InputError):
        attr.estimate("", TARGET)
    with pytest.raises(MemoryBudgetError):
        attr.estimate(PROMPT, TARGET, config=HETAConfig(memory_budget=1000))
