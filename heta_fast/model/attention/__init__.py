"""heta-fast's attention implementations and the switch between them (see switch.py)."""
from .switch import (
    EAGER,
    FLASH,
    PACKED,
    RECORDING,
    SDPA,
    attention_implementation,
    can_switch,
    choose_no_grad_attention,
    register,
)

__all__ = ["EAGER", "FLASH", "PACKED", "RECORDING", "SDPA", "attention_implementation", "can_switch",
           "choose_no_grad_attention", "register"]
