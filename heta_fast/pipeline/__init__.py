"""The production pipeline: read records, attribute them in input order, write resumable part files.

- ``readers.py``: JSONL / Parquet / CSV files, ``datasets`` data sets, DataFrames, dicts; ids.
- ``run.py``: :func:`attribute_records` (through the scheduler) and :func:`run_to_directory`.
- ``schema.py``: the versioned output row; ``parts.py``, ``writer.py``, ``manifest.py``: the
  output directory (atomic part files, manifests, lock, settings hash).
- ``progress.py``: the bar / log lines and the summary.

Reading results back: :mod:`heta_fast.io`. On Ray: :mod:`heta_fast.distributed`.
"""
