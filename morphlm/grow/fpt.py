"""FPT: fast prompt tuning by progressive training on partial models (Huang et al., "FPT: Improving Prompt
Tuning Efficiency via Progressive Training", Findings of EMNLP 2022, arXiv:2211.06840), on top of plain
soft-prompt tuning of a frozen model (:mod:`morphlm.grow.prompt_tuning`).

Prompt tuning starts on *partial* models built from the frozen full model and grows back to it stage by stage,
recycling the prompt (d_model never changes, so the learned prompt is the next stage's initial prompt):

* ``layers``: keep k evenly spaced layers (always the last of each group: layers {6,12,18} of 24 for
  the fractions 1/4, 1/2, 3/4), built with the shared index maps (``evenly_spaced_layers`` +
  ``compose_depth``);
* ``ffn``: keep, in every layer, the FFN neurons with the highest activation scores (mean |activation|
  over non-pad tokens of a few task training batches, with the current prompt), via ``IndexMap.select``
  on fc1's rows (gate and up together for SwiGLU) and fc2's columns, no rescaling;
* ``compound``: both.

Schedule (paper): 3 partial stages × 6K iterations at fractions 1/4, 1/2, 3/4, then the full model up to
30K iterations in total; prompt length 20, constant LR 0.3 (Adafactor), batch 32. Reconstructions (not
published or not applicable here): the activation-score data (task training batches), the optimizer
(AdamW, no weight decay, constant LR, its state re-initialised at each stage — only the prompt is
recycled), and the verbalizer readings of :mod:`~morphlm.grow.prompt_tuning` (the paper used T5's decoder).
FLOPs follow prompt tuning's convention, per stage on the stage's (partial) model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.tokenizer import Tokenizer
from ..data.tasks import Task
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from ..surgery import IndexMap, ParamMap, apply_plan, compose_depth, evenly_spaced_layers
from .errors import GrowthError
from .prompt_tuning import (PromptBatches, PromptTuneConfig, PromptTuneResult, Stage, prompted_forward,
                            resolve_reading, save_prompt)
from .prompt_tuning import prompt_tune as _prompt_tune

PARTIALS = ("layers", "ffn", "compound")


# ---------------------------------------------------------------------------- partial models
@torch.no_grad()
def activation_scores(lm: TransformerLM, batches: Sequence[dict],
                      prompt: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, the mean |activation| of every FFN neuron (the input of fc2) over non-pad tokens."""
    sums = [torch.zeros(lm.config.d_ff) for _ in lm.blocks]
    count = [0.0]
    keep: list[torch.Tensor] = []
    hooks = []
    for i, block in enumerate(lm.blocks):
        def hook(module, args, i=i):
            a = args[0].abs().float()  # (B, T', d_ff)
            w = keep[0].to(a.dtype)[..., None]  # (B, T', 1)
            sums[i] += (a * w).sum((0, 1)).cpu()
        hooks.append(block.mlp.fc2.register_forward_pre_hook(hook))
    was = lm.training
    lm.eval()
    try:
        for b in batches:
            mask = b["attention_mask"]
            P = 0 if prompt is None else prompt.shape[0]
            keep[:] = [torch.cat([mask[:, :1], mask.new_ones(mask.shape[0], P), mask[:, 1:]], 1)]
            count[0] += float(keep[0].sum())
            if prompt is None:
                lm(b["input_ids"], attention_mask=mask, token_type_ids=b.get("token_type_ids"))
            else:
                prompted_forward(lm, b["input_ids"], prompt[None], mask, b.get("token_type_ids"))
    finally:
        for h in hooks:
            h.remove()
        lm.train(was)
    return [s / max(count[0], 1.0) for s in sums]


def partial_model(lm: TransformerLM, n_layers: int | None = None, d_ff: int | None = None,
                  scores: Sequence[torch.Tensor] | None = None) -> tuple[TransformerLM, dict[str, Any]]:
    """A frozen partial copy of ``lm``: ``n_layers`` evenly spaced layers and/or the ``d_ff`` FFN neurons
    with the highest ``scores`` in each layer. Returns (model, {"layer_map", "ffn_keep"})."""
    cfg = lm.config
    L, Fd = cfg.n_layers, cfg.d_ff
    n_layers = L if n_layers is None else int(n_layers)
    d_ff = Fd if d_ff is None else int(d_ff)
    if not 1 <= n_layers <= L:
        raise GrowthError(f"a partial model keeps 1..{L} layers of this model, not {n_layers}")
    if not 1 <= d_ff <= Fd:
        raise GrowthError(f"a partial model keeps 1..{Fd} FFN neurons per layer, not {d_ff}")
    layer_map = evenly_spaced_layers(L, n_layers)
    ffn_keep: list[list[int]] | None = None
    if d_ff < Fd:
        if scores is None or len(scores) != L:
            raise GrowthError("FFN reduction keeps the neurons with the highest activation scores; pass one "
                              "score vector per layer (activation_scores)")
        ffn_keep = [sorted(torch.topk(s, d_ff).indices.tolist()) for s in scores]
    plan: dict[str, ParamMap] = {}
    for name, _ in lm.state_dict().items():
        pm = ParamMap(name)
        if ffn_keep is not None and name.startswith("blocks.") and ".mlp." in name:
            layer = int(name.split(".")[1])
            sel = IndexMap.select(ffn_keep[layer], Fd)
            rows = IndexMap.cat([sel, sel]) if cfg.activation == "swiglu" else sel  # [gate; up]
            if name.endswith("fc1.weight"):
                pm = ParamMap(name, (rows, None))
            elif name.endswith("fc1.bias"):
                pm = ParamMap(name, (rows,))
            elif name.endswith("fc2.weight"):
                pm = ParamMap(name, (None, sel))
        plan[name] = pm
    gp = compose_depth(plan, layer_map)
    sub_cfg = cfg.replace(n_layers=n_layers, d_ff=d_ff, name=f"{cfg.name}-partial-L{n_layers}-F{d_ff}")
    sub = TransformerLM(sub_cfg)
    state = apply_plan(gp.params, lm.state_dict(), sub.state_dict())
    sub.load_state_dict(state)
    sub.to(next(lm.parameters()).device).eval()
    for p in sub.parameters():
        p.requires_grad_(False)
    return sub, {"layer_map": layer_map, "ffn_keep": ffn_keep}


def plan_stages(cfg: ModelConfig, total_steps: int, progressive: bool = False, partial: str = "compound",
                fractions: Sequence[float] = (0.25, 0.5, 0.75), stage_steps: int | None = None) -> list[Stage]:
    """Plain: one full-model stage. FPT: one stage per fraction (``stage_steps`` each; default 1/5 of the
    total, the paper's 6K of 30K), then the full model for the remaining steps."""
    if total_steps < 1:
        raise GrowthError(f"steps={total_steps} must be >= 1")
    full = Stage(cfg.n_layers, cfg.d_ff, total_steps)
    if not progressive:
        return [full]
    if partial not in PARTIALS:
        raise GrowthError(f"partial={partial!r}; choose one of {PARTIALS}")
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f < 1 for f in fr) or fr != sorted(fr):
        raise GrowthError(f"stage fractions {fr} must be increasing numbers in (0, 1), e.g. 0.25,0.5,0.75")
    per = stage_steps if stage_steps is not None else max(1, total_steps // 5)
    if per < 1 or per * len(fr) >= total_steps:
        raise GrowthError(f"{len(fr)} partial stages of {per} steps leave no steps for the full model out of "
                          f"{total_steps}; lower --stage-steps or raise --max-steps")
    stages = []
    for f in fr:
        nl = max(1, round(f * cfg.n_layers)) if partial in ("layers", "compound") else cfg.n_layers
        nf = max(1, round(f * cfg.d_ff)) if partial in ("ffn", "compound") else cfg.d_ff
        stages.append(Stage(nl, nf, per, f))
    stages.append(Stage(cfg.n_layers, cfg.d_ff, total_steps - per * len(fr)))
    return stages


# ---------------------------------------------------------------------------- the verb
def _build_partial(score_batches: int):
    def build(lm: TransformerLM, st: Stage, data: PromptBatches, prompt: torch.Tensor, device: torch.device):
        scores = None
        if st.d_ff < lm.config.d_ff:
            sb = [data.train_batch(i) for i in range(score_batches)]
            scores = activation_scores(lm, [{k: v.to(device) for k, v in b.items()} for b in sb], prompt)
        return partial_model(lm, st.n_layers, st.d_ff, scores)
    return build


def prompt_tune(lm: TransformerLM, tokenizer: Tokenizer, task: Task, cfg: PromptTuneConfig,
                progress: bool = True, init: torch.Tensor | None = None) -> PromptTuneResult:
    """Tune a soft prompt for ``task`` on the frozen ``lm``: FPT's partial stages then the full model with
    ``cfg.progressive``, else plain prompt tuning (one full-model stage)."""
    def plan(mcfg: ModelConfig) -> list[Stage]:
        return plan_stages(mcfg, cfg.steps, cfg.progressive, cfg.partial, cfg.fractions, cfg.stage_steps)

    return _prompt_tune(lm, tokenizer, task, cfg, progress, init, plan=plan,
                        build_stage=_build_partial(cfg.score_batches))


def prompt_tune_checkpoint(model_dir: str | Path, task_train: str | Path, task_val: str | Path,
                           cfg: PromptTuneConfig, out_dir: str | Path, progress: bool = True) -> PromptTuneResult:
    """``morphlm prompt-tune``: load a checkpoint and its tokenizer, tune a prompt (plain or FPT), write
    ``out_dir`` (a prompt directory, :func:`~morphlm.grow.prompt_tuning.save_prompt`)."""
    from ..data.tasks import TaskError, load_task

    for what, path in (("--task-train", task_train), ("--task-val", task_val)):
        if not Path(path).is_file():
            raise TaskError(f"{what} {path} does not exist; pass a TSV/CSV/JSONL file with a label column")
    ckpt.claim_output_dir(out_dir, "prompt-tune", inputs=[("model", model_dir)])
    lm, tokenizer, _ = ckpt.open_checkpoint(model_dir, need_tokenizer="prompt tuning needs the model's tokenizer")
    resolve_reading(lm.config, cfg.reading)  # fail before reading the task files
    task = load_task(task_train, task_val)
    result = prompt_tune(lm, tokenizer, task, cfg, progress=progress)
    save_prompt(out_dir, result, model_dir, lm.config)
    return result


__all__ = ["PARTIALS", "activation_scores", "partial_model", "plan_stages", "prompt_tune", "prompt_tune_checkpoint"]
