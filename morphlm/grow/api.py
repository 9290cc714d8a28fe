"""The growth verb: ``grow(model_or_dir, target_cfg, method=...)``, its registry, and ``grow_checkpoint``.

Methods: ``fpi`` and ``aki`` (bert2BERT width operators; a deeper target is then stacked,
or mapped by ``depth=``), ``stack`` / ``interpolate`` (StackBERT depth maps; any width growth is FPI),
``msg`` (masked structural growth: fresh new units/copied new layers behind masks that ramp 0 → 1).
Learned operators register where they are declared (LiGO in ``learned.py``, Mango in ``mango.py``) with
:func:`register_method`; ``morphlm/grow/__init__.py`` imports every declaring module, so the registry never
depends on what else was imported. A method is ``fn(model, target_cfg, *, seed, **opts) -> GrowOutput``.
``msg`` puts its masks on the grown model as model state (:mod:`morphlm.model.growth_masks`), and
``grow_checkpoint`` writes the source run's carried AdamW moments as the grown directory's initial optimizer
state, which ``train --init`` loads.

``grow_checkpoint`` reads a checkpoint directory and writes a normal one (weights, config, the source's
tokenizer.json) whose lineage.json records the verb, method, options, the parent (path, weights sha256, its
total FLOPs) and the operator's own FLOPs (0 for the closed-form operators here), so
``train.checkpoint.total_flops`` adds up the compute behind a grown model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..model.config import PRESETS, ModelConfig
from ..model.transformer import TransformerLM
from .depth import MaskedGrowth, carry_optimizer_state, expand_depth, to_resume_format
from ..surgery import SurgeryPlan as GrowthPlan, apply_plan, compose_depth, first_copies
from .errors import GrowthError
from .plans import resolve_layer_map
from .width import aki_patch, check_growable, width_plan


@dataclass
class GrowOutput:
    model: TransformerLM
    plan: GrowthPlan | None = None
    flops: float = 0.0  # the operator's own cost (fitting a learned operator); 0 for closed-form operators
    function_preserving: str = ""  # the claim, in words
    options: dict[str, Any] = field(default_factory=dict)
    masks: MaskedGrowth | None = None


GrowthMethod = Callable[..., GrowOutput]
METHODS: dict[str, GrowthMethod] = {}


def register_method(name: str) -> Callable[[GrowthMethod], GrowthMethod]:
    def deco(fn: GrowthMethod) -> GrowthMethod:
        METHODS[name] = fn
        return fn
    return deco


def available_methods() -> list[str]:
    """Every registered method (morphlm/grow/__init__.py imports each module that declares one)."""
    return sorted(METHODS)


# ---------------------------------------------------------------------------- closed-form operators
def fresh_target(cfg: ModelConfig, seed: int) -> TransformerLM:
    """The target model's own initialisation, drawn from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TransformerLM(cfg)


def build_plan(src: ModelConfig, tgt: ModelConfig, *, width: str = "fpi", depth: Any = "stack", seed: int = 0,
               layers: str = "copy") -> tuple[dict, GrowthPlan]:
    """(width recipes over the source's layers, the full plan). Deterministic in (configs, options, seed)."""
    gen = torch.Generator().manual_seed(seed)
    mid = tgt.replace(n_layers=src.n_layers)
    wplan = width_plan(src, mid, gen, mode="msg" if width == "msg" else "fpi")
    layer_map = resolve_layer_map(depth, src.n_layers, tgt.n_layers)
    firsts = first_copies(layer_map)
    if width == "msg" and [s for s, f in zip(layer_map, firsts) if f] != list(range(src.n_layers)):
        raise GrowthError(f"msg needs a layer map whose first copies are the source layers in order 0..{src.n_layers - 1} "
                          f"(stack or interpolate do); {layer_map} is not")
    fresh_layers = [k for k, f in enumerate(firsts) if not f] if layers == "random" else []
    return wplan, compose_depth(wplan, layer_map, fresh_layers)


def _claim(src: ModelConfig, tgt: ModelConfig, width: str) -> str:
    if width == "msg":
        return "exact at mask 0 (max |Δlogits| < 1e-5); equals the plain grown model at mask 1"
    widths = ("d_model", "d_ff", "n_heads", "n_kv_heads")
    if width == "aki" and any(getattr(src, k) != getattr(tgt, k) for k in widths):
        return "no: AKI takes new units from the layer above"
    if tgt.n_layers > src.n_layers:
        return "no: every added layer adds its residual contribution"
    if src.head == "lm" and src.tie_embeddings and not src.final_norm and tgt.d_model > src.d_model:
        return "no: a tied LM head without a final norm reads the duplicated residual stream"
    if tgt.d_model % src.d_model:
        return "approximate: d_model is not a multiple of the source's, so norm statistics shift"
    return "exact up to float32 rounding"


def _closed_form(width: str, fixed_depth: str | None = None) -> GrowthMethod:
    allowed = {"depth", "layers", "ramp_steps"} if width == "msg" else ({"depth"} if fixed_depth is None else set())

    def method(model: TransformerLM, target: ModelConfig, *, seed: int = 0, **opts: Any) -> GrowOutput:
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise GrowthError(f"option(s) {unknown} do not apply to this method; it accepts {sorted(allowed) or 'none'}")
        src = model.config
        check_growable(src, target)
        depth = fixed_depth or opts.get("depth") or "stack"
        layers = opts.get("layers", "copy")
        if layers not in ("copy", "random"):
            raise GrowthError(f"layers={layers!r}: copy (new layers copy source layers) | random (fresh init)")
        wplan, plan = build_plan(src, target, width=width, depth=depth, seed=seed, layers=layers)
        grown = fresh_target(target, seed)
        fresh_state = grown.state_dict()
        src_state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
        mid = apply_plan(wplan, src_state, fresh_state)
        if width == "aki":
            aki_patch(mid, wplan, src.n_layers)
        fresh_layers = [k for k in plan.new_layers if plan.params[f"blocks.{k}.attn.qkv.weight"].source is None]
        grown.load_state_dict(expand_depth(mid, plan.layer_map, fresh_state, fresh_layers))
        options = {"seed": seed, "depth": depth if isinstance(depth, str) else list(depth)}
        masks = None
        if width == "msg":
            options.update(layers=layers, ramp_steps=int(opts.get("ramp_steps", 100)))
            masks = MaskedGrowth(grown, plan, ramp_steps=options["ramp_steps"])
        return GrowOutput(grown, plan, 0.0, _claim(src, target, width), options, masks)

    method.options = sorted(allowed)  # what `morphlm grow --help` lists for this method
    return method


register_method("fpi")(_closed_form("fpi"))
register_method("aki")(_closed_form("aki"))
register_method("stack")(_closed_form("fpi", "stack"))
register_method("interpolate")(_closed_form("fpi", "interpolate"))
register_method("msg")(_closed_form("msg"))


# ---------------------------------------------------------------------------- the verb
def resolve_target(target: ModelConfig | dict | str | Path, source: ModelConfig | None = None) -> ModelConfig:
    """A ModelConfig, a dict of fields, a preset name, or a config .json/.yaml path (or checkpoint dir).

    A dict is read against ``source`` (the model being grown) when given: ``{"n_layers": 4}`` means "the
    source's config with 4 layers", not "ModelConfig's defaults with 4 layers" (whose activation, norm or
    vocabulary would differ from the source's). A dict naming a ``preset`` starts from that preset instead."""
    if isinstance(target, ModelConfig):
        return target
    if isinstance(target, dict):
        fields = dict(target)
        if "preset" in fields:
            base = ModelConfig.from_name(str(fields.pop("preset"))).to_dict()
        elif source is not None:
            base = {k: v for k, v in source.to_dict().items() if k != "name"}
        else:
            base = {}
        return ModelConfig.from_dict({**base, **fields})
    path = Path(target)
    if path.exists():
        return ModelConfig.from_file(path)
    if str(target) in PRESETS:
        return ModelConfig.from_name(str(target))
    if path.suffix in (".json", ".yaml", ".yml"):
        raise GrowthError(f"target config {path} does not exist")
    raise GrowthError(f"unknown target {str(target)!r}: pass a preset ({', '.join(sorted(PRESETS))}) "
                      f"or a config .json/.yaml file")


def _load_source(model_or_dir: TransformerLM | str | Path) -> TransformerLM:
    if isinstance(model_or_dir, TransformerLM):
        return model_or_dir
    from ..train import checkpoint as ckpt

    return ckpt.open_checkpoint(model_or_dir, role="source", error=GrowthError)[0]


def _plain_source(model: TransformerLM) -> TransformerLM:
    """The source as a plain model: MSG masks that finished their ramp are inert and dropped (on a copy); a
    source whose masks still ramp is refused, since no growth operator carries half-open masks over."""
    masks = getattr(model, "growth_masks", None)
    if masks is None:
        return model
    if not masks.done:
        raise GrowthError(f"the source still carries MSG growth masks at m={masks.mask:g} (step {masks._step} of "
                          f"{masks.ramp_steps}); train it until the ramp ends (`morphlm train --init DIR "
                          f"--max-steps {masks.ramp_steps}` or more) and grow the trained directory")
    import copy

    plain = copy.deepcopy(model)
    plain.remove_growth_masks()
    return plain


def grow_model(model_or_dir: TransformerLM | str | Path, target_cfg: ModelConfig | dict | str | Path,
               method: str = "fpi", **opts: Any) -> GrowOutput:
    """Grow and return everything: the model, the plan (index maps), the operator's FLOPs, the claim."""
    methods = available_methods()
    if method not in METHODS:
        raise GrowthError(f"unknown growth method {method!r}; choose one of {', '.join(methods)}")
    model = _plain_source(_load_source(model_or_dir))
    target = resolve_target(target_cfg, model.config)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = METHODS[method](model, target, **opts)
    finally:
        model.train(was_training)
    return out


def grow(model_or_dir: TransformerLM | str | Path, target_cfg: ModelConfig | dict | str | Path,
         method: str = "fpi", **opts: Any) -> TransformerLM:
    """Grow a model (or a checkpoint directory) to ``target_cfg`` with ``method``; returns the new model.

    For ``msg`` the returned model carries its masks (at 0) as model state; ``fit`` ramps them (over
    ``ramp_steps``) and saving keeps them. ``model.masked_growth`` (a :class:`MaskedGrowth`) reads or sets the
    mask and, as a ``fit`` callback, can carry optimizer state. :func:`grow_model` also returns the plan.
    """
    out = grow_model(model_or_dir, target_cfg, method, **opts)
    if out.masks is not None:
        out.model.masked_growth = out.masks
    return out.model


def grow_checkpoint(src_dir: str | Path, target: ModelConfig | dict | str | Path, method: str,
                    out_dir: str | Path, *, seed: int = 0, **opts: Any) -> dict[str, Any]:
    """Grow the model in ``src_dir`` and write a checkpoint directory to ``out_dir``; returns a summary."""
    from ..train import checkpoint as ckpt

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    opts = {k: v for k, v in opts.items() if v is not None}
    ckpt.check_derived_dirs(src_dir, out_dir, role="source", verb="grow", error=GrowthError,
                            float_only="growth maps full-precision weights")
    source, _, record = ckpt.open_checkpoint(src_dir, role="source", error=GrowthError)
    if method in LEARNED_METHODS and opts.get("data") is None:
        opts["data"] = _source_batches(src_dir, resolve_target(target, source.config), seed)
    result = grow_model(source, target, method, seed=seed, **opts)
    src_cfg = source.config
    lineage = {
        "verb": "grow", "method": method, "options": result.options or {"seed": seed, **opts},
        "target": target.name if isinstance(target, ModelConfig) else str(target),
        "source_config": src_cfg.to_dict(),
        "flops": float(result.flops),
        "function_preserving": result.function_preserving,
        "parents": [record.parent()],
    }
    if result.plan is not None:
        lineage.update(layer_map=result.plan.layer_map, new_layers=result.plan.new_layers)
    if "data" in record.lineage:
        lineage["data"] = record.lineage["data"]
    model = result.model
    ckpt.save_checkpoint(out_dir, model.state_dict(), model.config, tokenizer_json=record.tokenizer_json,
                         lineage=lineage)
    _carry_initial_optimizer(result, source, src_dir, out_dir)
    return {"out_dir": str(out_dir), "method": method, "source_params": source.num_parameters(),
            "target_params": model.num_parameters(), "flops": float(result.flops),
            "parent_flops": lineage["parents"][0]["flops"], "function_preserving": result.function_preserving,
            "layer_map": lineage.get("layer_map")}


LEARNED_METHODS = ("ligo", "mango")


def _source_batches(src_dir: Path, target_cfg: ModelConfig, seed: int):
    """The batches a learned operator is fitted on: the source run's own data (its recorded data spec and
    tokenizer), shaped for the target model."""
    from ..train import checkpoint as ckpt
    from ..train.run import RunSpec, build_data, saved_data_spec

    tokenizer = ckpt.open_tokenizer(src_dir, "a learned operator is fitted on the source's data, tokenized with "
                                             "its tokenizer", error=GrowthError)
    spec = RunSpec(model=target_cfg, data=saved_data_spec(src_dir))
    spec.train.seed = seed
    _, data, _ = build_data(spec, tokenizer)
    return data


def _carry_initial_optimizer(result: GrowOutput, source: TransformerLM, src_dir: Path, out_dir: Path) -> None:
    """MSG: write the source run's AdamW moments, mapped through the growth's index maps (old entries kept, new
    ones zero), into the grown directory as its initial optimizer state; ``train --init`` loads it on a fresh
    start. Nothing is written when the source has no optimizer state or the method has no masks."""
    from ..train import checkpoint as ckpt

    if result.masks is None or not (src_dir / ckpt.TRAINER_FILE).exists():
        return
    tensors, groups = to_resume_format(carry_optimizer_state(source, src_dir, result.model, result.plan))
    ckpt.write_initial_optimizer_state(out_dir, tensors, groups)
