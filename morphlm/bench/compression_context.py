"""What every compression-benchmark arm shares: the :class:`Context` (sizes, data, teachers, caches), the
measurement helpers (dev accuracy, accuracy curves, latency, sizes), the training arguments of every run,
and the distillation/extraction glue the arms are built from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..compress.distill_loss import teacher_layer_map
from ..compress.latency import measure_latency
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from ..train.loop import fit
from ..train.optim import TrainArgs
from .compression_data import LogitCachedTeacher, TaskData, UnlabelledBatches
from .compression_sizes import BenchSizes
from .runner import ResultCache

KD_TEMPERATURE = 2.0


class ArmUnavailable(Exception):
    """An arm cannot run with this setting (e.g. augmentation without a masked-LM teacher); recorded as
    "not available" with the reason, never faked."""


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[dict]) -> float:
    """Dev accuracy of a classifier over fixed batches (labels ignored by the forward)."""
    was = model.training
    model.eval()
    right = total = 0
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        logits = model(**inputs).logits
        right += int((logits.argmax(-1) == b["labels"]).sum())
        total += int(b["labels"].numel())
    model.train(was)
    return right / max(total, 1)


class AccuracyCurve:
    """fit() callback: dev accuracy every ``every`` steps and at the end -> ``self.points`` [(step, acc)]."""

    def __init__(self, batches: list[dict], every: int, step_offset: int = 0) -> None:
        self.batches, self.every, self.offset = batches, max(int(every), 1), step_offset
        self.points: list[tuple[int, float]] = []

    def on_step_end(self, state, record) -> None:
        if state.step % self.every == 0:
            self.points.append((self.offset + state.step, accuracy(state.raw_model, self.batches)))

    def on_train_end(self, state) -> None:
        if not self.points or self.points[-1][0] != self.offset + state.step:
            self.points.append((self.offset + state.step, accuracy(state.raw_model, self.batches)))


def majority_rate(batches: list[dict]) -> float:
    """Accuracy of always answering the most frequent label of ``batches`` (the majority-class baseline)."""
    labels = torch.cat([b["labels"].reshape(-1) for b in batches])
    return float(torch.bincount(labels).max()) / max(int(labels.numel()), 1)


def learned(curve: list[tuple[int, float]], majority: float, margin: float) -> bool:
    """Whether a dev curve rose ``margin`` above the majority-class rate at some logged point: a reference
    that never does has learned nothing, and a saving measured against it would measure nothing."""
    return any(acc >= majority + margin - 1e-12 for _, acc in curve)


class LossTrace:
    """fit() callback: the logged losses (and per-term metrics) of the first and the last step."""

    def __init__(self) -> None:
        self.first: dict | None = None
        self.last: dict | None = None

    def on_step_end(self, state, record) -> None:
        row = {k: float(v) for k, v in record.items() if k == "loss" or k.startswith("loss_")
               if isinstance(v, (int, float))}
        if self.first is None:
            self.first = row
        self.last = row


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First logged step whose accuracy is >= target (None when never reached)."""
    for step, acc in curve:
        if acc >= target - 1e-12:
            return int(step)
    return None


def train_args(sizes: BenchSizes, steps: int, lr: float, seed: int, *, progress: bool, out_dir: str | None = None,
               warmup: int | None = None, precision: str | None = None) -> TrainArgs:
    """The training arguments of every benchmark run: linear decay to 0 after a 10% warm-up, AdamW, CPU, the
    profile's precision (``sizes.precision``, bf16 autocast by default, fp32 weights and optimizer)."""
    return TrainArgs(out_dir=out_dir, max_steps=max(int(steps), 1), lr=lr,
                     warmup_steps=min(warmup if warmup is not None else max(steps // 10, 1), max(steps - 1, 0)),
                     schedule="linear", min_lr_ratio=0.0, weight_decay=0.01, beta2=0.999, eval_every=0,
                     eval_at_end=False, seed=seed, device="cpu", precision=precision or sizes.precision,
                     progress=progress,
                     resume="auto" if out_dir else "never", save_every=max(steps // 4, 1) if out_dir else 0)


def cls_loss(model, batch):
    out = model(**batch)
    return out.loss, {"accuracy": (out.logits.argmax(-1) == batch["labels"]).float().mean()}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """fp32 safetensors bytes of a model's weights (what its checkpoint's model.safetensors holds)."""
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    return len(ckpt.tensors_to_bytes(state))


# ============================================================================================ context
@dataclass
class Context:
    """Everything the arms share: sizes, data, the teachers, the work dir."""

    sizes: BenchSizes
    work: Path
    task: TaskData
    teacher: TransformerLM  # fine-tuned classifier
    teacher_pre: TransformerLM  # the pretrained (not fine-tuned) encoder, teacher of general distillation
    student_cfg: ModelConfig
    unlabelled: torch.Tensor  # 1-D token ids for general distillation
    tokenizer_json: str | None
    teacher_acc: float
    progress: bool = False
    augmented: list | None = None  # when set, every student arm trains on it (baselines included)
    info: dict = field(default_factory=dict)
    _latency: dict = field(default_factory=dict)
    _batches: dict = field(default_factory=dict)
    _logit_teacher: Any = None

    @property
    def logit_teacher(self) -> LogitCachedTeacher:
        if self._logit_teacher is None:
            self._logit_teacher = LogitCachedTeacher(self.teacher)
        return self._logit_teacher

    # --------------------------------------------------------------- shared measurements
    def latency(self, model: nn.Module, key: str | None = None) -> dict:
        """Median/p90 ms at batch 1 (and batch 32), seq ``latency_seq``, 1 thread; cached per config."""
        cfg = getattr(model, "config", None)
        key = key or (cfg.to_json() if cfg is not None else repr(model))
        if key not in self._latency:
            s = self.sizes
            vocab = cfg.vocab_size if cfg is not None else self.student_cfg.vocab_size
            seq = min(s.latency_seq, cfg.max_seq_len if cfg is not None else s.latency_seq)
            b1 = measure_latency(model, vocab_size=vocab, batch_size=1, seq_len=seq, threads=1,
                                 warmup=s.latency_warmup, runs=s.latency_runs)
            b32 = measure_latency(model, vocab_size=vocab, batch_size=32, seq_len=seq, threads=1,
                                  warmup=1, runs=s.latency_batch32_runs)
            self._latency[key] = {"b1_median_ms": b1["median_ms"], "b1_p90_ms": b1["p90_ms"],
                                  "b32_median_ms": b32["median_ms"], "seq_len": seq, "threads": 1,
                                  "runs": b1["runs"]}
        return self._latency[key]

    @property
    def majority(self) -> float:
        """The dev set's majority-class rate (50.9% on SST-2 dev)."""
        if "majority_rate" not in self.info:
            self.info["majority_rate"] = majority_rate(self.task.dev_batches())
        return self.info["majority_rate"]

    @property
    def cdir(self) -> Path:
        """Where results that depend on the method code live (per-arm JSON, GD students, searches); the code
        fingerprint is taken once per run, so edits made while it runs do not scatter its cache."""
        if "code" not in self.info:
            self.info["code"] = code_fingerprint()
        kind = self.info.get("teacher_kind", "own")
        return self.work / "results" / f"{self.info['code']}-{self.sizes.key(kind)}"

    def gd_data(self, batch_size: int, seed: int) -> "UnlabelledBatches":
        return UnlabelledBatches(self.unlabelled, batch_size, self.sizes.max_len, seed=seed,
                                 cls_id=getattr(self.task.tokenizer, "cls_id", None),
                                 sep_id=getattr(self.task.tokenizer, "sep_id", None))

    def train_examples(self) -> list:
        return self.augmented if self.augmented is not None else self.task.train

    def data(self, seed: int):
        """The (cached) SST-2 train batch source of a seed: encoding 67k sentences is not free."""
        key = ("train", seed, id(self.augmented))
        if key not in self._batches:
            self._batches[key] = self.task.batches(seed, self.train_examples())
        return self._batches[key]

    def new_student(self, seed: int, cfg: ModelConfig | None = None) -> TransformerLM:
        torch.manual_seed(seed)
        return TransformerLM(cfg or self.student_cfg)

    def describe(self, model: nn.Module) -> dict:
        return {"params": param_count(model), "latency": self.latency(model),
                "config": {k: getattr(model.config, k) for k in ("n_layers", "d_model", "n_heads", "d_ff",
                                                                  "vocab_size")}}

    def cached_arm(self, arm: str, seed: int, fn: Callable[[], dict]) -> dict:
        """Run ``fn`` once per (arm, seed) and code version (:class:`~morphlm.bench.runner.ResultCache` under
        :attr:`cdir`); the JSON result is reused by later runs, and nothing cut short by a stop is cached."""
        return ResultCache(self.cdir).get_or_run(f"{arm}-s{seed}", fn, f"{arm} seed {seed}")


def code_fingerprint() -> str:
    """Hash of the benchmark's and the compression methods' source (and of the shared surgery layer, where the
    checkout has one): cached arm results are only reused by the same code (the teacher checkpoints do not
    depend on it and are kept)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve()
    pkg = here.parents[1]
    files = [*sorted(here.parent.glob("compression*.py")), *sorted((pkg / "compress").rglob("*.py")),
             *sorted((pkg / "surgery").glob("*.py"))]  # surgery/: the index maps extraction is built from
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


# ============================================================================================ distillation glue
def distill_stage(ctx: Context, teacher: nn.Module, student: nn.Module, data, steps: int, seed: int, stage: str,
                  *, layer_map=None, callbacks=(), lr: float | None = None, projections=None,
                  keep: dict | None = None, **cfg_overrides):
    """One distillation stage through :func:`morphlm.compress.distill.distill` (the one training loop
    underneath); ``projections``: the W_e/W_h to start from (a previous stage's); ``keep``: a dict that receives
    the trained ones under ``"projections"``."""
    from ..compress import distill as dmod
    kwargs: dict[str, Any] = {"stage": stage, **cfg_overrides}
    if layer_map is not None:
        kwargs["layer_map"] = list(layer_map)
    cfg = dmod.DistillConfig(**kwargs)
    args = train_args(ctx.sizes, steps, lr or ctx.sizes.distill_lr, seed, progress=ctx.progress)
    if teacher is ctx.teacher and stage in ("logit", "prediction"):
        teacher = ctx.logit_teacher  # logits only: reuse the forward passes other arms already ran
    teacher.eval()
    loss_fn = dmod.DistillLoss(teacher, student.config, cfg)
    res = dmod.distill(teacher, student, data, args, cfg, callbacks=list(callbacks), projections=projections,
                       loss_fn=loss_fn)
    if keep is not None:
        keep["projections"] = dmod.projection_state(loss_fn)
    return res


def train_labels(ctx: Context, model: nn.Module, seed: int, steps: int | None = None, lr: float | None = None,
                  callbacks=()):
    steps = steps or ctx.sizes.student_steps
    return fit(model, cls_loss, ctx.data(seed), train_args(ctx.sizes, steps, lr or ctx.sizes.student_lr, seed,
                                                       progress=ctx.progress), list(callbacks))


def student_result(ctx: Context, model: nn.Module, curve: AccuracyCurve, steps: int, flops: float,
                    **extra) -> dict:
    acc = accuracy(model, ctx.task.dev_batches())
    return {"dev_acc": acc, "steps": steps, "flops": flops, "curve": curve.points, **ctx.describe(model), **extra}


def uniform_map(ctx: Context) -> list[int]:
    n_s, n_t = ctx.student_cfg.n_layers, ctx.teacher.config.n_layers
    return teacher_layer_map("uniform", n_t, n_s).to_list()


def extract_from_teacher(ctx: Context, method: str, seed: int, data=None) -> TransformerLM:
    from ..compress import extract as ex
    kw: dict[str, Any] = {"method": method, "seed": seed}
    if method == "impt":
        kw["data"] = data if data is not None else ctx.data(seed)
    student = ex.extract_student(ctx.teacher, ctx.student_cfg, **kw)
    student.requires_grad_(True)  # the teacher is frozen by distill(); its copies must train
    student.train()
    return student


def loss_settings(sizes: BenchSizes) -> dict[str, Any]:
    """The intermediate-loss settings of every TinyBERT-style stage (DistillConfig fields) from the profile."""
    return {"att_loss": sizes.att_loss, "head_map": sizes.head_map, "hid_loss": sizes.hid_loss,
            "att_weight": sizes.att_weight, "hid_weight": sizes.hid_weight, "emb_weight": sizes.emb_weight}


def task_distill(ctx: Context, student: nn.Module, seed: int, *, layer_map=None, projections=None) -> dict:
    """TinyBERT task distillation within the student budget: ``td_intermediate_frac`` of the steps intermediate
    (att + hidden + embedding, starting from ``projections`` — the W_h/W_e general distillation trained — when
    given), the rest prediction (soft CE); the curve is measured in the prediction stage."""
    s = ctx.sizes
    n1 = int(round(s.student_steps * s.td_intermediate_frac))
    n2 = s.student_steps - n1
    data = ctx.data(seed)
    flops1 = 0.0
    extra: dict[str, Any] = {"intermediate_steps": n1, "prediction_steps": n2}
    if n1 > 0:
        trace = LossTrace()
        r1 = distill_stage(ctx, ctx.teacher, student, data, n1, seed, "intermediate", layer_map=layer_map,
                           projections=projections, callbacks=[trace], **loss_settings(s))
        flops1 = r1.flops
        extra["intermediate_loss"] = {"first": trace.first, "last": trace.last}
    curve = AccuracyCurve(ctx.task.dev_batches(), s.eval_every, step_offset=n1)
    r2 = distill_stage(ctx, ctx.teacher, student, data, n2, seed + 7919, "prediction", callbacks=[curve])
    return student_result(ctx, student, curve, n1 + n2, flops1 + r2.flops, layer_map=layer_map, **extra)
