"""The attribution ops, one folder each (flash-linear-attention layout).

``heta_fast/ops/<op>/``: ``naive.py`` the eager reference (the test oracle), ``blocked.py`` the
tiled CPU path, ``common.py`` the op's shared checks and helpers, and ``__init__.py`` the
dispatcher: the Triton kernel in ``heta_fast.kernels.<op>`` for CUDA tensors when Triton is
installed, else the blocked path.  Importing any of them imports neither triton nor queries CUDA.
"""
