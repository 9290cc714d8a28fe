"""Growth: reuse a trained small model to start a larger one (refs/growth.md).

``grow(model_or_dir, target_cfg, method="fpi"|"aki"|"stack"|"interpolate"|"msg", **opts)`` is the verb;
``grow_checkpoint`` is its checkpoint-directory form (``morphlm grow``). :mod:`morphlm.surgery` holds the shared
select/duplicate helpers (also used by extraction), ``width`` the bert2BERT operators, ``depth`` the layer
maps, MSG masks and optimizer carry-over.
"""

from .api import (METHODS, GrowOutput, available_methods, build_plan, grow, grow_checkpoint, grow_model,
                  masked_growth_from_checkpoint, register_method, resolve_target)
from .depth import MaskedGrowth, carry_optimizer_state, expand_depth, load_optimizer_state, to_resume_format
from ..surgery import IndexMap, ParamMap, SurgeryPlan as GrowthPlan, apply_plan, remap
from .errors import GrowthError
from .width import check_growable, width_plan

__all__ = [
    "METHODS", "GrowOutput", "GrowthError", "GrowthPlan", "IndexMap", "MaskedGrowth", "ParamMap", "apply_plan",
    "available_methods", "build_plan", "carry_optimizer_state", "check_growable", "expand_depth", "grow",
    "grow_checkpoint", "grow_model", "load_optimizer_state", "masked_growth_from_checkpoint", "register_method",
    "remap", "resolve_target", "to_resume_format", "width_plan",
]

from . import schedules as _schedules  # noqa: E402  (registers `morphlm train --schedule` runners)
from .schedules import SCHEDULES, ScheduleResult, available_schedules, run_schedule  # noqa: E402

__all__ += ["SCHEDULES", "ScheduleResult", "available_schedules", "run_schedule"]
