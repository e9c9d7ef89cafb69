"""Root pytest configuration (tests/ and benchmarks/).

``python -m pytest`` from the repository root puts the root first on ``sys.path``, where the
top-level ``kernels/`` folder would shadow the PyPI package transformers imports; importing
heta_fast settles it once (``heta_fast.shadowing.prefer_installed_kernels``).
"""
from heta_fast.shadowing import prefer_installed_kernels

prefer_installed_kernels()
