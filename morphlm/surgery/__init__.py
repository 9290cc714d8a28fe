"""Model surgery shared by growth and compression: index maps (select / duplicate units of a weight), layer
maps (one type, one 0-based convention, one parser) and the config checks two related models must pass.

Layering: ``grow/`` and ``compress/`` import from here; this package imports only ``model/``.
"""

from .errors import SurgeryError
from .family import SAME_FIELDS, check_same_family
from .index_maps import (IndexMap, ParamMap, SurgeryPlan, apply_plan, compose_depth, first_copies, new_entries,
                         remap)
from .layers import (NAMED_MAPS, LayerMap, evenly_spaced_layers, interpolate_layers, is_monotone, parse_layer_map,
                     stack_layers, uniform_layers)

__all__ = [
    "SurgeryError", "SAME_FIELDS", "check_same_family", "IndexMap", "ParamMap", "SurgeryPlan", "apply_plan",
    "compose_depth", "first_copies", "new_entries", "remap", "NAMED_MAPS", "LayerMap", "evenly_spaced_layers",
    "interpolate_layers", "is_monotone", "parse_layer_map", "stack_layers", "uniform_layers",
]
