"""The kernels' shared dtype rule for tl.dot operands (heta_fast.kernels.utils.widen_dot_operands).

The rule's GPU side cannot run here (no GPU), so it is stated directly; its interpreter side is
what every bf16 row of the kernel tests depends on.
"""

from __future__ import annotations

import pytest
import torch

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


@pytest.mark.parametrize(
    ("a", "b", "on_gpu", "interpreted"),
    [
        (F16, F16, False, False),  # native fp16 dot everywhere
        (BF16, BF16, False, True),  # native on a GPU; the interpreter multiplies bf16 bit patterns
        (F32, F32, True, True),  # .to(float32) of float32 is a no-op
        (F64, F64, True, True),
        (F16, BF16, True, True),  # mixed: float32
        (BF16, F32, True, True),
        (F16, F32, True, True),
    ],
)
def test_widen_dot_operands(a, b, on_gpu, interpreted):
    utils = pytest.importorskip("heta_fast.kernels.utils")
    assert utils.widen_dot_operands(a, b, interpret=False) is on_gpu
    assert utils.widen_dot_operands(a, b, interpret=True) is interpreted
    assert utils.widen_dot_operands(b, a, interpret=True) is interpreted
