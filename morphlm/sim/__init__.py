"""A Pangu-style cost simulator: hardware profiles (measured or from data sheets), an operator-level cost model of
one training step (time, memory per device, MFU) under a DP/TP/EP/PP layout, a scaling law fitted to our own runs,
a search over a model space ranked by predicted loss per time, and a validation against measured steps."""

from .cost import StepCost, memory_per_device, pipeline_bubble_fraction, step_cost
from .hardware import HardwareProfile, MatmulCurve, SimError, calibrate, load_profile
from .space import Layout, SimModel, from_model_config, parse_layout

__all__ = ["HardwareProfile", "MatmulCurve", "SimError", "calibrate", "load_profile", "StepCost", "step_cost",
           "memory_per_device", "pipeline_bubble_fraction", "Layout", "SimModel", "from_model_config",
           "parse_layout"]
