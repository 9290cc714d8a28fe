"""Search a model space × parallel layouts for the best predicted loss per time.

Every combination of the space's field values (a :class:`SimModel` field → a value or a list of values) is
costed under every layout (:func:`.cost.step_cost`); combinations that are not valid models, that a layout cannot
run, or whose memory per device exceeds the device's are dropped (and counted). The rest are ranked by the loss
the scaling law predicts after a fixed wall-clock budget: D = tokens/s × budget, loss = L(N_active, D) — lower is
better, so a faster config sees more tokens and a larger one starts lower; that trade is the loss-per-time the
Pangu Ultra MoE search optimises (a reconstruction: their objective is not published in full).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from .cost import step_cost
from .hardware import HardwareProfile, SimError
from .scaling import ScalingLaw
from .space import Layout, SimModel

# A small routed space for a CPU, and a ~1B-active one for a GPU.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "cpu": {"n_layers": [4, 8], "d_model": [128, 256], "n_heads": 4, "experts": [0, 8], "top_k": [1, 2],
            "expert_d_ff": [256, 512], "shared_experts": [0, 1], "seq_len": 256, "vocab_size": 2048,
            "activation": "swiglu"},
    "gpu": {"n_layers": [16, 24], "d_model": [1024, 2048], "n_heads": 16, "experts": [0, 16, 64], "top_k": [1, 2, 8],
            "expert_d_ff": [1024, 2048], "shared_experts": [0, 1], "seq_len": 4096, "vocab_size": 50304,
            "activation": "swiglu"},
}


def load_space(spec: str, profile: HardwareProfile) -> dict[str, Any]:
    """``default`` (the CPU space on a one-device profile, else the GPU one) or a JSON file of field → values."""
    if spec == "default":
        return DEFAULT_SPACES["cpu" if profile.interconnect_bw is None else "gpu"]
    path = Path(spec)
    if not path.is_file():
        raise SimError(f"--space {spec}: no such file; give a JSON file mapping SimModel fields to values or "
                       "lists, or 'default'")
    try:
        space = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SimError(f"--space {spec} is not valid JSON: {exc}") from None
    if not isinstance(space, dict) or not space:
        raise SimError(f"--space {spec} must be a non-empty JSON object of SimModel fields to values or lists")
    return space


def expand_space(space: dict[str, Any]) -> tuple[list[SimModel], int]:
    """Every valid SimModel of the space (dense models ignore the routed fields; duplicates dropped) and how many
    combinations were invalid."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(SimModel)}
    unknown = sorted(set(space) - known)
    if unknown:
        raise SimError(f"space: unknown field(s) {unknown}; known: {sorted(known)}")
    keys = sorted(space)
    values = [_values(k, space[k]) for k in keys]
    if any(not v for v in values):
        raise SimError("space: every field needs at least one value")
    seen: set[tuple] = set()
    models: list[SimModel] = []
    invalid = 0
    for combo in itertools.product(*values):
        fields = dict(zip(keys, combo))
        if not fields.get("experts") and not fields.get("pool_size"):
            fields.update(top_k=1, shared_experts=0, expert_d_ff=None, capacity_factor=None)
        try:
            model = SimModel(**fields)
        except (SimError, TypeError):
            invalid += 1
            continue
        key = tuple(sorted(model.to_dict().items()))
        if key not in seen:
            seen.add(key)
            models.append(model)
    return models, invalid


def _values(key: str, spec: Any) -> list[Any]:
    """A field's values: a list, one value, or a range ``{"from": a, "to": b, "step": s}`` (arithmetic) /
    ``{"from": a, "to": b, "times": r}`` (geometric), both ends included."""
    if isinstance(spec, list):
        return spec
    if not isinstance(spec, dict):
        return [spec]
    if set(spec) not in ({"from", "to", "step"}, {"from", "to", "times"}):
        raise SimError(f"space field {key}: a range is {{\"from\": a, \"to\": b, \"step\": s}} or "
                       f"{{\"from\": a, \"to\": b, \"times\": r}}; got keys {sorted(spec)}")
    lo, hi = spec["from"], spec["to"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec.values()) or lo > hi:
        raise SimError(f"space field {key}: range {spec} needs numbers with from <= to")
    out = []
    if "step" in spec:
        if spec["step"] <= 0:
            raise SimError(f"space field {key}: step {spec['step']} must be positive")
        v = lo
        while v <= hi:
            out.append(v)
            v += spec["step"]
    else:
        if spec["times"] <= 1:
            raise SimError(f"space field {key}: times {spec['times']} must be greater than 1")
        v = lo
        while v <= hi:
            out.append(v)
            v *= spec["times"]
    return out


def search(space: dict[str, Any], layouts: list[Layout], profile: HardwareProfile, law: ScalingLaw, *,
           dtype: str = "bf16", budget_s: float = 3600.0, devices: int | None = None) -> dict[str, Any]:
    """Rank every (model, layout) that fits by the predicted loss after ``budget_s`` seconds."""
    if budget_s <= 0:
        raise SimError(f"budget {budget_s} s must be positive")
    if not layouts:
        raise SimError("no layout to search; give --layout or --devices")
    models, invalid = expand_space(space)
    rows: list[dict[str, Any]] = []
    unfit = incompatible = 0
    first_incompatible = None
    for model in models:
        for layout in layouts:
            try:
                layout.check(model, devices)
            except SimError as exc:
                incompatible += 1
                first_incompatible = first_incompatible or f"{layout.describe()}: {exc}"
                continue
            cost = step_cost(model, layout, profile, dtype, devices)
            if not cost.fits:
                unfit += 1
                continue
            tokens = cost.tokens_per_s * budget_s
            rows.append({"model": model.to_dict(), "layout": layout.to_dict(), "layout_name": layout.describe(),
                         "total_params": model.total_params(), "active_params": model.active_params(),
                         "step_time_s": cost.time_s, "tokens_per_s": cost.tokens_per_s, "mfu": cost.mfu,
                         "memory_gib": cost.memory["total"] / 2**30, "tokens_in_budget": tokens,
                         "predicted_loss": law.loss(model.active_params(), tokens),
                         "bubble_s": cost.bubble_s, "comm_s": cost.comm_s})
    rows.sort(key=lambda r: (r["predicted_loss"], r["step_time_s"]))
    return {"results": rows, "models": len(models), "layouts": len(layouts), "invalid_models": invalid,
            "incompatible": incompatible, "first_incompatible": first_incompatible, "over_memory": unfit,
            "budget_s": budget_s, "dtype": dtype,
            "memory_limit_gib": profile.memory_bytes / 2**30, "scaling_law": law.to_dict()}


def render_table(res: dict[str, Any], top: int) -> str:
    """The top rows: L blocks, R loop repeats, d width, E experts per layer (``Mp``: a UniPool pool of M), k top-k,
    f_e expert width, sh shared experts, the layout, parameters, predicted step time, tokens/s, MFU, memory per
    device and the predicted loss after the budget."""
    head = (f"{'#':>3} {'L':>3} {'R':>2} {'d':>5} {'E':>4} {'k':>2} {'f_e':>5} {'sh':>2} {'layout':<24} {'active':>9} "
            f"{'total':>9} {'step s':>9} {'tok/s':>10} {'MFU':>6} {'GiB':>7} {'loss':>7}")
    lines = [head, "-" * len(head)]
    for i, r in enumerate(res["results"][:top], 1):
        m = r["model"]
        lines.append(f"{i:>3} {m['n_layers']:>3} {m['loop_repeats']:>2} {m['d_model']:>5} "
                     f"{(str(m['pool_size']) + 'p') if m['pool_size'] else m['experts']:>4} "
                     f"{m['top_k']:>2} {m['expert_d_ff'] or '-':>5} {m['shared_experts']:>2} "
                     f"{r['layout_name']:<24} {r['active_params'] / 1e6:>8.2f}M {r['total_params'] / 1e6:>8.2f}M "
                     f"{r['step_time_s']:>9.4g} {r['tokens_per_s']:>10.4g} {r['mfu']:>6.1%} "
                     f"{r['memory_gib']:>7.3g} {r['predicted_loss']:>7.4f}")
    lines.append(f"{len(res['results'])} fit of {res['models']} models × {res['layouts']} layouts "
                 f"({res['over_memory']} over {res['memory_limit_gib']:.3g} GiB, {res['incompatible']} "
                 f"incompatible, {res['invalid_models']} invalid); loss after {res['budget_s'] / 3600:.3g} h, "
                 f"law: {res['scaling_law']['source']}")
    return "\n".join(lines)
