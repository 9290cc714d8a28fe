"""Growth: reuse a trained small model to start a larger one.

``grow(model_or_dir, target_cfg, method="fpi"|"aki"|"stack"|"interpolate"|"msg"|"ligo"|"mango", **opts)`` is the
verb; ``grow_checkpoint`` is its checkpoint-directory form (``morphlm grow``). :mod:`morphlm.surgery` holds the
shared select/duplicate helpers (also used by extraction), ``width`` the bert2BERT operators, ``depth`` the layer maps,
MSG masks and optimizer carry-over, ``learned``/``mango`` the learned operators, ``schedules`` and
``schedule_methods`` the progressive training schedules, ``prompt_tuning``/``fpt`` soft-prompt tuning and FPT.

Registries are filled by declaration: every module below that declares a growth method (``register_method``)
or a schedule (``register_schedule``) is imported here, so importing ``morphlm.grow`` (or any of its modules)
makes every method and schedule available, whatever else was imported.
"""

from .api import (METHODS, GrowOutput, available_methods, build_plan, grow, grow_checkpoint, grow_model,
                  register_method, resolve_target)
from .depth import MaskedGrowth, carry_optimizer_state, expand_depth, load_optimizer_state, msg_flags, to_resume_format
from ..surgery import IndexMap, ParamMap, SurgeryPlan as GrowthPlan, apply_plan, remap
from .errors import GrowthError
from .width import check_growable, width_plan
from . import learned, mango  # noqa: E402,F401  (declare ligo, mango)
from .schedules import (SCHEDULES, ScheduleResult, available_schedules, register_schedule, run_from_spec,  # noqa: E402
                        run_schedule)
from . import schedule_methods  # noqa: E402,F401  (declares two-stage, apollo, mslt, chain)

__all__ = [
    "METHODS", "SCHEDULES", "GrowOutput", "GrowthError", "GrowthPlan", "IndexMap", "MaskedGrowth", "ParamMap",
    "ScheduleResult", "apply_plan", "available_methods", "available_schedules", "build_plan",
    "carry_optimizer_state", "check_growable", "expand_depth", "grow", "grow_checkpoint", "grow_model",
    "load_optimizer_state", "msg_flags", "register_method", "register_schedule", "remap", "resolve_target",
    "run_from_spec", "run_schedule", "to_resume_format", "width_plan",
]
