"""DSA and f1_alignment through heta_fast.compat: the published interface."""
import pytest
import torch

from heta_fast.compat import DSA, f1_alignment


def test_dsa_evaluate():
    assert DSA.evaluate(torch.tensor([1.0, 1.0, 2.0]), [2], [0]) == pytest.approx(0.25)
    assert DSA.evaluate(torch.tensor([0.0, 0.0]), [0], [1]) == 0.0
    assert DSA.evaluate(torch.tensor([2.0, 2.0]), [], [1]) == pytest.approx(-0.5)


def test_f1_alignment():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert f1_alignment(s, [1, 3]) == pytest.approx(1.0)
    assert f1_alignment(s, [1, 0], top_k=2) == pytest.approx(0.5)
    assert f1_alignment(s, [0], top_k=4) == pytest.approx(2 * 0.25 * 1 / 1.25)
    assert f1_alignment(s, []) == 0.0
