"""Evaluation suite: faithfulness and alignment metrics, baseline attribution methods, and the
runner behind ``heta-fast eval``. See docs/evaluation.md."""
from .data import EvalExample, load_curated, load_examples, load_jsonl
from .methods import ALIASES, METHODS, resolve_methods, run_methods
from .metrics import (
                      comprehensiveness,
                      dsa,
                      f1_alignment,
                      hard_faithfulness,
                      hellinger,
                      normalise_unit,
                      soft_faithfulness,
                      soft_nc,
                      soft_ns,
                      sufficiency,
)
from .runner import METRICS, EvalSettings, run_evaluation
from .summary import bootstrap_ci, paired_difference, render_table, summarise

__all__ = ["EvalExample", "load_curated", "load_examples", "load_jsonl", "METHODS", "ALIASES", "resolve_methods",
           "run_methods", "soft_faithfulness", "soft_ns", "soft_nc", "hard_faithfulness", "comprehensiveness",
           "sufficiency", "dsa", "f1_alignment", "hellinger", "normalise_unit", "METRICS", "EvalSettings",
           "run_evaluation", "bootstrap_ci", "paired_difference", "summarise", "render_table"]
