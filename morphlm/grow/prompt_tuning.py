"""Soft-prompt tuning of a frozen model (Lester, Al-Rfou and Constant, "The Power of Scale for
Parameter-Efficient Prompt Tuning", EMNLP 2021, arXiv:2104.08691).

Only ``P × d_model`` prompt vectors are trained; the model is frozen and no head weights are added. The prompt
enters through the model's Hugging Face-style ``inputs_embeds``: :func:`prompted_forward` inserts it *right
after the first token*, so a leading [cls]/[bos] keeps position 0 and every later token sees the prompt, causal
or not. A prompt vector stands in for a token embedding: it gets the position embedding of its slot (learned
positions 1..P; RoPE rotates by the same slots), the segment embedding of segment 0, and is always attended to.
The input tokens move to positions 0 and P+1..P+T-1, so T + P must fit max_seq_len; the logits cover the T
input positions only (prompt slots are dropped), hidden states and attentions all T + P.

A classification task is read through the model's own LM head with a *verbalizer* (one label word per class,
PET-style):

* ``mlm`` reading (BERT-style encoder, head ``mlm``): ``<cls> [prompt] text <mask> <sep>``; the class
  scores are the MLM logits of the label words at the ``<mask>`` position.
* ``causal`` reading (GPT-style, head ``lm``): ``<cls> [prompt] text <sep>``; the class scores are the
  next-token logits of the label words at the last real token (``<sep>``, a fixed "answer now" marker).

The loss is cross-entropy over the K label-word logits. A label word is the first token of ``" " + word`` (the
word's own first token when a small vocabulary splits the space off); two classes whose words share that token
are refused. A ``cls``-head model is refused (its classifier would be a new, untrained head). The prompt starts
as embeddings of randomly drawn vocabulary tokens (Lester et al.'s "sampled vocabulary" initialisation). The
optimizer is AdamW without weight decay at a constant LR (a reconstruction: the paper used Adafactor).

:func:`prompt_tune` runs one or more *stages*, each on a frozen model built by the caller (the full model, or
FPT's partial models: :mod:`morphlm.grow.fpt`), recycling the prompt from stage to stage.

FLOPs convention (through the one ruler, morphlm/train/flops.py): a prompt-tuning step over a frozen
model costs ``2 × forward`` per token — the forward pass plus a backward pass that computes activation
gradients only (≈ one forward; the weight gradients, the other ≈ forward, are not computed) — of the
*stage's* model, at sequence length T + P, for B·(T + P) tokens; the prompt's own update is negligible.
Batches are padded to their longest example, so the FLOPs are added per step from the real batch shape.
Evaluation is not training compute and is not counted (its wall time is excluded too).

A prompt directory (:func:`save_prompt`): prompt.safetensors (the (P, D) tensor), prompt.json (config,
verbalizer, metrics, stages), lineage.json and metrics.jsonl, each written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import ClassificationBatches, Task
from ..data.tokenizer import N_SPECIAL, Tokenizer
from ..io import write_atomic
from ..model.config import ModelConfig
from ..model.transformer import IGNORE_INDEX, ModelOutput, TransformerLM
from ..train import checkpoint as ckpt
from ..train import flops as flops_mod
from ..train.loop import evaluate, fit
from ..train.optim import TrainArgs, resolve_device
from .errors import GrowthError

READINGS = ("auto", "mlm", "causal")


# ---------------------------------------------------------------------------- readings and verbalizer
def resolve_reading(cfg: ModelConfig, reading: str = "auto") -> str:
    """'mlm' or 'causal' for this model; a clear error when the reading does not fit the model."""
    if reading not in READINGS:
        raise GrowthError(f"reading={reading!r}; choose one of {READINGS}")
    if cfg.head == "cls":
        raise GrowthError("prompt tuning reads classes through the model's LM head, but this model has a "
                          "classification head (head=cls) whose classifier would be a new, untrained head; use "
                          "a pretrained causal (head=lm) or masked-LM (head=mlm) checkpoint")
    own = "mlm" if cfg.head == "mlm" else "causal"
    if reading != "auto" and reading != own:
        raise GrowthError(f"reading={reading!r} does not fit this model: it is a "
                          f"{'masked-LM encoder (head=mlm)' if own == 'mlm' else 'causal LM (head=lm)'}; "
                          f"use --reading {own} (or auto)")
    if own == "mlm" and cfg.causal:
        raise GrowthError("the mlm reading needs a bidirectional encoder, but this head=mlm model is causal")
    return own


def default_label_words(label_names: Sequence[str]) -> list[str]:
    """The label names themselves ("0"/"1" for integer labels): generic, override with --verbalizer."""
    return [str(n) for n in label_names]


def verbalizer_ids(tokenizer: Tokenizer, words: Sequence[str], n_classes: int) -> list[int]:
    """First token id of ``" " + word`` (skipping a lone space token) per class; distinct ids required."""
    if len(words) != n_classes:
        raise GrowthError(f"the verbalizer has {len(words)} label words {list(words)} but the task has "
                          f"{n_classes} classes; give one word per class in label order")
    ids = []
    for w in words:
        toks = tokenizer.encode(" " + w.strip())
        if len(toks) > 1 and not tokenizer.decode(toks[:1]).strip():
            toks = toks[1:]  # a small vocabulary may split off the space: score the word's own first token
        if not toks:
            raise GrowthError(f"label word {w!r} encodes to no tokens; pick a non-empty word")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise GrowthError(f"label words {list(words)} share first tokens {ids}; pick words that start differently")
    return ids


class PromptBatches:
    """Classification batches laid out for a reading, with ``score_pos`` (B,): the position whose logits
    score the classes. ``offset`` shifts the step (a stage continues the data stream of the one before)."""

    def __init__(self, base: ClassificationBatches, reading: str, mask_id: int, offset: int = 0,
                 max_val: int | None = None) -> None:
        self.base, self.reading, self.mask_id, self.offset = base, reading, mask_id, offset
        self._val = None
        self.max_val = max_val

    def with_offset(self, offset: int) -> "PromptBatches":
        out = PromptBatches(self.base, self.reading, self.mask_id, offset, self.max_val)
        out._val = self._val
        return out

    def _layout(self, batch: dict) -> dict:
        n = batch["attention_mask"].sum(1)  # (B,) real lengths; the last real token is <sep>
        if self.reading == "causal":
            return {**batch, "score_pos": n - 1}
        B, L = batch["input_ids"].shape
        out = {}
        for key, fill in (("input_ids", self.mask_id), ("attention_mask", 1), ("token_type_ids", None)):
            src = batch[key]
            dst = src.new_zeros(B, L + 1)
            for i in range(B):
                k = int(n[i]) - 1  # the <mask> goes right before the final <sep>
                dst[i, :k] = src[i, :k]
                dst[i, k] = src[i, k] if fill is None else fill
                dst[i, k + 1:] = src[i, k:]
            out[key] = dst
        return {**out, "labels": batch["labels"], "score_pos": n - 1}

    def train_batch(self, step: int) -> dict:
        return self._layout(self.base.train_batch(self.offset + step))

    def val_batches(self) -> list[dict]:
        if self._val is None:
            vb = self.base.val_batches()
            if self.max_val is not None:
                keep, out = self.max_val, []
                for b in vb:
                    if keep <= 0:
                        break
                    out.append({k: v[:keep] for k, v in b.items()})
                    keep -= out[-1]["input_ids"].shape[0]
                vb = out
            self._val = [self._layout(b) for b in vb]
        return self._val


# ---------------------------------------------------------------------------- the prompt-tuned model
def prompted_forward(lm: TransformerLM, input_ids: torch.Tensor, prompt: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                     output_attentions: bool = False) -> ModelOutput:
    """``lm`` on ``input_ids`` (B, T) with the soft prompt ``prompt`` (1 or B, P, D) inserted after the first
    token (see the module docstring): logits (and the loss of ``labels`` (B, T)) cover the T input positions."""
    cfg = lm.config
    B, T = input_ids.shape
    shape = tuple(prompt.shape)
    if len(shape) != 3 or shape[0] not in (1, B) or shape[2] != cfg.d_model:
        raise ValueError(f"the prompt must have shape (1 or {B}, P, {cfg.d_model}), got {shape}")
    P = shape[1]
    if T < 1:
        raise ValueError("a prompt needs at least one input token (the prompt follows the first one)")
    if T + P > cfg.max_seq_len:
        raise ValueError(f"sequence length {T} plus {P} prompt vectors exceeds max_seq_len={cfg.max_seq_len}; "
                         f"truncate the input or shorten the prompt")
    h = lm.tok_emb(input_ids)  # (B, T, D)
    h = torch.cat([h[:, :1], prompt.to(h.dtype).expand(B, -1, -1), h[:, 1:]], dim=1)  # (B, T+P, D)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(B, P), attention_mask[:, 1:]], 1)
    if token_type_ids is not None:
        token_type_ids = torch.cat([token_type_ids[:, :1], token_type_ids.new_zeros(B, P), token_type_ids[:, 1:]], 1)
    if labels is not None and cfg.head != "cls":
        labels = torch.cat([labels[:, :1], labels.new_full((B, P), IGNORE_INDEX), labels[:, 1:]], 1)  # (B, T+P)
    out = lm(inputs_embeds=h, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels,
             output_hidden_states=output_hidden_states, output_attentions=output_attentions)
    if cfg.head != "cls":  # the LM heads are per position: drop the prompt slots' logits
        out.logits = torch.cat([out.logits[:, :1], out.logits[:, 1 + P:]], dim=1)  # (B, T, V)
    return out


class PromptModel(nn.Module):
    """A frozen TransformerLM plus a trainable prompt (P, D). The frozen model stays in eval mode."""

    def __init__(self, lm: TransformerLM, prompt: nn.Parameter) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.prompt = prompt

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, whatever the loop asks
        return self

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return prompted_forward(self.lm, input_ids, self.prompt[None], attention_mask, token_type_ids)


def init_prompt(lm: TransformerLM, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """Sampled-vocabulary initialisation: embeddings of ``prompt_len`` random non-special tokens."""
    g = torch.Generator().manual_seed(int(seed))
    V = lm.config.vocab_size
    ids = torch.randint(min(N_SPECIAL, V - 1), V, (prompt_len,), generator=g)
    return lm.tok_emb.weight.detach()[ids].clone().float()  # (P, D)


def make_loss(label_ids: Sequence[int]):
    """loss_fn(model, batch) for fit(): cross-entropy over the label words' logits at ``score_pos``."""
    ids = torch.tensor(list(label_ids), dtype=torch.long)

    def loss_fn(model, batch):
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        scores = logits[rows, batch["score_pos"]][:, ids.to(logits.device)].float()  # (B, K)
        loss = F.cross_entropy(scores, batch["labels"])
        return loss, {"accuracy": (scores.argmax(-1) == batch["labels"]).float().mean()}

    return loss_fn


# ---------------------------------------------------------------------------- FLOPs
def prompt_tuning_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward-to-input through a frozen model: 2 × the ruler's forward FLOPs per token."""
    return 2.0 * flops_mod.forward_flops_per_token(cfg, seq_len)


def step_flops(cfg: ModelConfig, batch_size: int, seq_len: int, prompt_len: int) -> float:
    """FLOPs of one prompt-tuning step on ``batch_size`` sequences of ``seq_len`` tokens (+ the prompt)."""
    T = seq_len + prompt_len
    return prompt_tuning_flops_per_token(cfg, T) * batch_size * T


# ---------------------------------------------------------------------------- training
@dataclass
class Stage:
    """One prompt-tuning stage: ``steps`` steps on a frozen model of ``n_layers`` layers and ``d_ff`` FFN neurons
    (the full model, or a partial one; ``fraction`` of the full size)."""

    n_layers: int
    d_ff: int
    steps: int
    fraction: float = 1.0


StagePlanner = Callable[[ModelConfig], Sequence[Stage]]
# build_stage(full frozen lm, stage, batches, current prompt (P, D), device) -> (frozen stage model, info with
# "layer_map" and "ffn_keep"); called for every stage smaller than the full model
StageBuilder = Callable[[TransformerLM, Stage, "PromptBatches", torch.Tensor, torch.device],
                        tuple[TransformerLM, dict[str, Any]]]


@dataclass
class PromptTuneConfig:
    """Prompt-tuning settings. ``progressive`` … ``score_batches`` configure FPT (:mod:`morphlm.grow.fpt`),
    which plans the stages; plain prompt tuning runs one full-model stage of ``steps`` steps."""

    prompt_len: int = 20
    steps: int = 300
    lr: float = 3e-2
    batch_size: int = 32
    max_len: int = 64  # tokens per example, [cls]/[sep] (and <mask>) included, prompt excluded
    eval_every: int = 50
    seed: int = 0
    reading: str = "auto"
    label_words: list[str] | None = None
    progressive: bool = False
    partial: str = "compound"
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    stage_steps: int | None = None
    score_batches: int = 4  # training batches for the FFN activation scores
    max_val: int | None = None  # evaluate on the first N validation examples (None: all)
    grad_clip: float = 1.0
    device: str = "cpu"


@dataclass
class PromptTuneResult:
    prompt: torch.Tensor  # (P, D)
    history: list[dict[str, Any]]  # one record per evaluation (full model): step, stage, flops, train_time_s, ...
    stages: list[dict[str, Any]]
    stage_prompts: list[torch.Tensor]  # the prompt at the start of each stage, then the final one
    flops: float
    train_time_s: float
    final: dict[str, float]
    reading: str
    label_words: list[str]
    label_ids: list[int]
    config: dict[str, Any] = field(default_factory=dict)


class _Tracker:
    """fit() callback: exact per-step FLOPs from each batch's shape, training-only wall time, and the full
    model's validation accuracy with the current prompt every ``eval_every`` global steps."""

    def __init__(self, data, stage_cfg, P, flops0, time0, step0, eval_fn, eval_every, last_step, stage_idx, history):
        self.data, self.cfg, self.P = data, stage_cfg, P
        self.flops, self.time, self.step0 = flops0, time0, step0
        self.eval_fn, self.eval_every, self.last_step = eval_fn, eval_every, last_step
        self.stage_idx, self.history = stage_idx, history
        self._t = 0.0

    def on_step_begin(self, state) -> None:
        B, T = self.data.train_batch(state.step)["input_ids"].shape
        self._step_flops = step_flops(self.cfg, int(B), int(T), self.P)
        self._t = time.perf_counter()

    def on_step_end(self, state, record) -> None:
        self.time += time.perf_counter() - self._t
        self.flops += self._step_flops
        state.flops = self.flops  # fit's ruler assumed one batch shape; the ledger is the exact count
        g = self.step0 + state.step
        if (self.eval_every and g % self.eval_every == 0) or g == self.last_step:
            metrics = self.eval_fn()
            self.history.append({"step": g, "stage": self.stage_idx, "flops": self.flops,
                                 "train_time_s": self.time, "train_loss": record["loss"], **metrics})


def prompt_tune(lm: TransformerLM, tokenizer: Tokenizer, task: Task, cfg: PromptTuneConfig,
                progress: bool = True, init: torch.Tensor | None = None, plan: StagePlanner | None = None,
                build_stage: StageBuilder | None = None) -> PromptTuneResult:
    """Tune a soft prompt for ``task`` on the frozen ``lm``: the stages ``plan(lm.config)`` (default: one
    full-model stage of ``cfg.steps``), each on the model ``build_stage`` makes (the full model itself for a
    full-size stage), recycling the prompt from stage to stage. FPT (``cfg.progressive``) is
    :func:`morphlm.grow.fpt.prompt_tune`."""
    if cfg.progressive and plan is None:
        raise GrowthError("progressive prompt tuning (FPT) plans partial stages: call morphlm.grow.fpt.prompt_tune")
    mcfg = lm.config
    reading = resolve_reading(mcfg, cfg.reading)
    if cfg.prompt_len < 1:
        raise GrowthError(f"prompt_len={cfg.prompt_len} must be >= 1")
    need = cfg.max_len + cfg.prompt_len
    if need > mcfg.max_seq_len:
        raise GrowthError(f"max_len {cfg.max_len} + prompt_len {cfg.prompt_len} = {need} exceeds the model's "
                          f"max_seq_len={mcfg.max_seq_len}; shorten --prompt-len or --seq-len")
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise GrowthError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {mcfg.vocab_size}; "
                          "use the tokenizer the model was trained with")
    words = list(cfg.label_words) if cfg.label_words else default_label_words(task.label_names)
    label_ids = verbalizer_ids(tokenizer, words, task.n_classes)
    device = resolve_device(cfg.device)
    lm = lm.to(device).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    base = ClassificationBatches(task.train, task.val, tokenizer, cfg.batch_size,
                                 cfg.max_len - (1 if reading == "mlm" else 0), seed=cfg.seed)
    data = PromptBatches(base, reading, tokenizer.mask_id, max_val=cfg.max_val)
    if not data.val_batches():
        raise GrowthError("the validation file has no examples; prompt tuning evaluates on it")
    loss_fn = make_loss(label_ids)
    stages = list(plan(mcfg)) if plan is not None else [Stage(mcfg.n_layers, mcfg.d_ff, cfg.steps)]
    if cfg.steps < 1:
        raise GrowthError(f"steps={cfg.steps} must be >= 1")
    prompt = (init.detach().clone().float() if init is not None else init_prompt(lm, cfg.prompt_len, cfg.seed))
    if prompt.shape != (cfg.prompt_len, mcfg.d_model):
        raise GrowthError(f"initial prompt has shape {tuple(prompt.shape)}, expected ({cfg.prompt_len}, {mcfg.d_model})")
    prompt = prompt.to(device)

    def eval_full(p: torch.Tensor):
        def run():
            m = PromptModel(lm, nn.Parameter(p.detach(), requires_grad=False))
            out = evaluate(m, loss_fn, data.val_batches(), device, "fp32")
            return {"val_accuracy": out["val_accuracy"], "val_loss": out["val_loss"]}
        return run

    history: list[dict[str, Any]] = []
    stage_info: list[dict[str, Any]] = []
    stage_prompts: list[torch.Tensor] = []
    flops_done, time_done, step0 = 0.0, 0.0, 0
    for k, st in enumerate(stages):
        stage_prompts.append(prompt.detach().cpu().clone())
        t0 = time.perf_counter()
        if (st.n_layers, st.d_ff) == (mcfg.n_layers, mcfg.d_ff):
            stage_lm, info = lm, {"layer_map": list(range(mcfg.n_layers)), "ffn_keep": None}
        else:
            if build_stage is None:
                raise GrowthError(f"stage {k} uses a partial model ({st.n_layers} layers, d_ff {st.d_ff}) but no "
                                  f"build_stage was given")
            stage_lm, info = build_stage(lm, st, data, prompt, device)
        build_s = time.perf_counter() - t0
        time_done += build_s  # building a partial model (and scoring neurons) is part of the wall time
        param = nn.Parameter(prompt.detach().clone())  # prompt recycling: start from the previous stage's
        model = PromptModel(stage_lm, param)
        stage_data = data.with_offset(step0)
        tracker = _Tracker(stage_data, stage_lm.config, cfg.prompt_len, flops_done, time_done, step0,
                           eval_full(param), cfg.eval_every, step0 + st.steps, k, history)
        args = TrainArgs(out_dir=None, max_steps=st.steps, lr=cfg.lr, warmup_steps=0, schedule="constant",
                         weight_decay=0.0, grad_clip=cfg.grad_clip, eval_every=0, eval_at_end=False,
                         seed=cfg.seed + k, device=str(device), precision="fp32", progress=progress,
                         flops_per_step=step_flops(stage_lm.config, cfg.batch_size, cfg.max_len, cfg.prompt_len))
        fit(model, loss_fn, stage_data, args, [tracker])
        prompt = param.detach().clone()
        stage_info.append({"stage": k, "n_layers": st.n_layers, "d_ff": st.d_ff, "fraction": st.fraction,
                           "steps": st.steps, "first_step": step0, "layer_map": info["layer_map"],
                           "flops": tracker.flops - flops_done, "train_time_s": tracker.time - time_done,
                           "build_time_s": build_s})
        flops_done, time_done, step0 = tracker.flops, tracker.time, step0 + st.steps
    stage_prompts.append(prompt.detach().cpu().clone())
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")}
    return PromptTuneResult(prompt=prompt.detach().cpu(), history=history, stages=stage_info,
                            stage_prompts=stage_prompts, flops=flops_done, train_time_s=time_done, final=final,
                            reading=reading, label_words=words, label_ids=label_ids,
                            config={**asdict(cfg), "fractions": list(cfg.fractions)})


def cost_to_reach(history: Sequence[dict[str, Any]], target: float, key: str = "val_accuracy") -> dict[str, Any] | None:
    """The first evaluation record with ``key >= target`` (FLOPs, wall time, step), or None."""
    for rec in history:
        if rec[key] >= target - 1e-12:
            return rec
    return None


# ---------------------------------------------------------------------------- prompt directories
PROMPT_FILE = "prompt.safetensors"
PROMPT_JSON = "prompt.json"
PROMPT_FORMAT = 1
FLOPS_CONVENTION = ("2 x forward FLOPs per token (forward + backward to the input, no weight gradients) of each "
                    "stage's frozen model at length T+P, summed per step over B*(T+P) tokens; evaluation excluded")


def save_prompt(out_dir: str | Path, result: PromptTuneResult, model_dir: str | Path | None,
                model_cfg: ModelConfig) -> Path:
    """Write a prompt directory: prompt.safetensors, prompt.json (config, verbalizer, metrics, stages),
    lineage.json (verb, parent model dir and hash, this run's FLOPs) and metrics.jsonl — each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": str(PROMPT_FORMAT), "prompt_len": str(result.prompt.shape[0]),
            "reading": result.reading}
    ckpt.write_tensors(out / PROMPT_FILE, {"prompt": result.prompt.float()}, meta)
    doc = {"format_version": PROMPT_FORMAT, "kind": "soft-prompt", "reading": result.reading,
           "label_words": result.label_words, "label_ids": result.label_ids, "config": result.config,
           "model_config": model_cfg.to_dict(), "metrics": result.final, "flops": result.flops,
           "train_time_s": result.train_time_s, "flops_convention": FLOPS_CONVENTION, "stages": result.stages}
    write_atomic(out / PROMPT_JSON, json.dumps(doc, indent=2))
    parents = []
    if model_dir is not None:
        parents.append(ckpt.parent_record(model_dir))
    lineage = {"verb": "prompt-tune", "progressive": bool(result.config.get("progressive")), "parents": parents,
               "flops": result.flops, "flops_convention": FLOPS_CONVENTION, "stages": result.stages}
    write_atomic(out / ckpt.LINEAGE_FILE, json.dumps(lineage, indent=2))
    write_atomic(out / ckpt.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in result.history))
    return out


def load_prompt(prompt_dir: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """(prompt (P, D), prompt.json) of a directory written by :func:`save_prompt`."""
    d = Path(prompt_dir)
    if not (d / PROMPT_FILE).is_file() or not (d / PROMPT_JSON).is_file():
        raise GrowthError(f"{d} is not a prompt directory (no {PROMPT_FILE} / {PROMPT_JSON}); pass the --out "
                          "directory of `morphlm prompt-tune`")
    tensors, _ = ckpt.read_tensors(d / PROMPT_FILE, "prompt file")
    return tensors["prompt"], json.loads((d / PROMPT_JSON).read_text(encoding="utf-8"))
