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


def test_remaining_time_of_one_phase():
    assert ProgressEvent("x", 1, 4, "u", 2.0).remaining_seconds == pytest.approx(6.0)
    assert ProgressEvent("x", 0, 4, "u", 2.0).remaining_seconds is None


def test_live_rendering_rewrites_one_line_and_close_erases_it():
    stream = io.StringIO()
    live = TerminalProgress(stream, live=True, tick=None, phases=("forward", "curvature"), targets=2,
                            hvps_per_target=(2,))
    reporter = PhaseReporter(live, "curvature", 4, "HVPs")
    reporter.advance(2)
    reporter.finish()
    out = stream.getvalue()
    assert "\n" not in out  # one line, rewritten in place
    assert "\r\x1b[Kheta-fast: [2/2] curvature 0/4 HVPs, 0/2 target tokens done" in out
    assert "[2/2] curvature 4/4 HVPs, 2/2 target tokens done, 2 batches" in out
    live.close()
    assert stream.getvalue().endswith("\r\x1b[K") and not live._shown
    live.close()  # twice is harmless
    assert stream.getvalue().count("\x1b[K") == out.count("\x1b[K") + 1


def test_without_a_terminal_only_long_phases_print_plain_lines():
    stream = io.StringIO()
    log = TerminalProgress(stream, live=False, log_after=5, log_every=30)
    for done, elapsed in [(0, 0.0), (1, 1.0), (2, 4.9)]:
        log(ProgressEvent("information", done, 10, "masked variants", elapsed))
    log(ProgressEvent("flow", 2, 2, "layers", 0.5))
    assert stream.getvalue() == ""  # a short phase prints nothing
    for done, elapsed in [(3, 6.0), (4, 20.0), (8, 37.0), (10, 40.0)]:
        log(ProgressEvent("information", done, 10, "masked variants", elapsed))
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["heta-fast: information 3/10 masked variants",
                                                      "heta-fast: information 8/10 masked variants",
                                                      "heta-fast: information done: 10 masked variants in 40 s"]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_the_time_left_counts_the_phases_still_to_come():
    tp = TerminalProgress(io.StringIO(), live=False, phases=("forward", "flow", "curvature", "information"),
                          work={"forward": 1.0, "flow": 0.0, "curvature": 100.0, "information": 50.0})
    # Half the curvature in 10 s: 50 units of work in 10 s, 100 still to do.
    assert tp.remaining(ProgressEvent("curvature", 2, 4, "HVPs", 10.0)) == pytest.approx(20.0)
    # Before its first unit, a phase knows nothing unless an earlier phase (not the forward) set a rate.
    tp(ProgressEvent("forward", 1, 1, "pass", 0.5))
    assert tp.remaining(ProgressEvent("information", 0, 5, "masked variants", 0.0)) is None
    tp(ProgressEvent("curvature", 4, 4, "HVPs", 20.0))  # 5 units/s
    assert tp.remaining(ProgressEvent("information", 0, 5, "masked variants", 2.0)) == pytest.approx(8.0)
    assert "about 8 s left" in tp.describe(ProgressEvent("information", 0, 5, "masked variants", 2.0))


@pytest.mark.parametrize("config", [{"estimator": "exact", "num_probes": 1, "max_batch": 2},
                                    {"window_size": 4, "window_overlap": 0.5, "max_batch": 5}],
                         ids=["exact", "windows"])
def test_target_tokens_done_follow_the_curvature_term(config, monkeypatch):
    """Each target's operator is built when the one before it is finished: at that moment the HVPs
    reported so far must place the progress line at exactly that window and target."""
    from heta_fast.progress import target_position
    from heta_fast.signals.curvature import products_needed
    from heta_fast.signals.curvature import signal as curvature_module
    from heta_fast.windows import context_windows

    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig(**config))
    done, at_operator = [0], []
    original = curvature_module.OperatorFactory

    def factory(*args, **kwargs):
        at_operator.append(done[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(curvature_module, "OperatorFactory", factory)

    def progress(event):
        if event.phase == "curvature":
            done[0] = event.done

    result = attr.attribute(PROMPT, TARGET, progress=progress)
    n_tgt, cfg = len(result.target_ids), attr.config
    windows = context_windows(len(result.context_ids), cfg.window_size, cfg.window_overlap)
    per_target = tuple(products_needed(cfg, w.size) for w in windows)
    expected = [(w, t) for w in range(len(windows)) for t in range(n_tgt)]
    assert len(at_operator) == len(expected) and len(expected) > 1
    assert [target_position(d, n_tgt, per_target) for d in at_operator] == expected
    assert target_position(done[0], n_tgt, per_target) == (len(windows) - 1, n_tgt)


def test_the_estimate_describes_passes_hvps_and_memory():
    from heta_fast.memory import mib
    from heta_fast.progress import describe_estimate, work_flops

    attr = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig())
    estimates = attr.estimate(PROMPT, TARGET)
    head, *lines = describe_estimate(estimates, work_flops(1000, 10, 20, 30), weight_bytes=3 * 2**20)
    assert head == "estimate: about 2.4e+05 floating-point operations"
    curvature = next(line for line in lines if "curvature" in line)
    assert "32 HVPs in 1 pass, peak about" in curvature  # 2 targets x 16 probing products
    assert lines[0].startswith("  forward: 1 pass") and "in 1 pass" not in lines[0]
    peak = max(e.peak_bytes for e in estimates)
    assert lines[-1].startswith("  expected memory:") and "weights 3 MiB" in lines[-1]
    assert lines[-1].endswith(f"+ largest batch {mib(peak)})") and peak > 0


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
