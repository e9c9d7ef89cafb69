"""The model layer: everything that knows how a transformers model is built and run.

- adapter.py: :class:`ModelAdapter`, the runtime adapter (embeddings in, logits / hidden
  states / the capture pass out) and what it does to the model it holds
- capture.py: the single forward pass the signals declare their needs to (:class:`CaptureRequest`)
- attention/: heta's attention implementations (eager, recording, packed) and the switch
- architectures/: the module map of each family, behind :func:`register_architecture`
- loading.py, gguf_cache.py, aliases.py: loading by alias, GGUF file, folder or hub id
"""
from .architectures import ArchitectureSpec, HeadLayout, register_architecture, supported_model_types

__all__ = ["ArchitectureSpec", "HeadLayout", "ModelAdapter", "register_architecture", "supported_model_types"]


def __getattr__(name):
    # The adapter pulls in transformers' cache classes; load it on first use only.
    if name == "ModelAdapter":
        from .adapter import ModelAdapter

        return ModelAdapter
    raise AttributeError(f"module 'heta_fast.model' has no attribute {name!r}")
