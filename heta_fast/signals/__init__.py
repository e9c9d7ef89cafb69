"""The three HETA signals, one package each, behind one contract (base.py).

- flow/: the semantic flow gate M_T
- curvature/: the curvature term S
- information/: the information term I

:data:`SIGNALS` maps each component name (heta_fast/components.py) to its signal.
"""
from __future__ import annotations

from ..components import COMPONENTS
from .base import Signal, SignalContext
from .curvature import CurvatureSignal
from .flow import FlowSignal
from .information import InformationSignal

SIGNALS: dict[str, Signal] = {s.name: s for s in (FlowSignal(), CurvatureSignal(), InformationSignal())}
assert tuple(SIGNALS) == COMPONENTS, "every component has exactly one signal, in the components' order"

__all__ = ["SIGNALS", "Signal", "SignalContext"]
