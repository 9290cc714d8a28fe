"""AutoTinyBERT (Yin et al., ACL 2021, arXiv 2107.13686; refs/compression.md §6): a weight-shared super-model,
a latency predictor measured on this machine, and evolutionary vs random architecture search.

1. **Super-model** (SuperPLM). One :class:`~morphlm.model.TransformerLM` of the space's maximal shape. Each
   training step samples one sub-architecture (layers, hidden, heads, FFN) from a generator seeded by the step
   (so a resumed run samples the same archs) and trains it on the batch. A sub-model's parameters are LEADING
   slices of the super-model's: the first L layers, the first d hidden dims, the first d_ff neurons, and per
   layer the first kv heads, the first query heads of each kv group and the first head_dim' dims of every head
   (``extract.choose_units(method='leading', layers='bottom')``: the same index maps as extraction, so a
   trained sub-model and its extracted standalone copy are the same function). The slices are taken with
   ``remap`` (differentiable ``index_select``) and the native model code runs on them through
   ``torch.func.functional_call`` on a meta-device TransformerLM of the sub-config: gradients flow into the
   shared weights (zero outside the slices) and there is no second forward implementation. Training is the
   one loop ``fit()`` with :class:`SupernetLoss` (also a fit callback that tells it the step). Head dims follow
   the head structure (leading dims of each kept head) rather than AutoTinyBERT's plain ``W[:d_qkv]`` rows,
   because morphlm ties q's width to d_model (a declared deviation). Evaluation inside ``fit`` uses the full
   super-model. FLOPs: ``fit`` is given the mean training FLOPs (one ruler, ``train/flops.py``) of the archs
   sampled at the steps this call trains (start..max_steps-1), so the total is exact, also across resumes.
2. **Latency predictor**. Latencies are MEASURED here with :func:`~morphlm.compress.latency.measure_latency`
   (batch 1, sequence 128, 1 thread; median of ``runs`` after ``warmup``) on randomly initialised sub-models.
   AutoTinyBERT fits an MLP on (d, L, d_ff, d_qkv); with a few hundred samples on a 2-core machine we fit a
   lightly ridge-penalised linear model on cost-model features (L, L·d, L·d², L·d·d_ff, L·d_ff, L·heads, d:
   projections, attention, FFN, per-head overhead, embeddings/head) with non-negative coefficients (every
   term is a cost, so predictions stay positive and monotone even from few samples) — a declared deviation;
   the held-out MAPE is reported.
3. **Search** under ``predicted latency <= max_latency_ms``. Random search draws distinct feasible candidates
   uniformly. Evolutionary search (AutoTinyBERT's "Evolved"): a population of the best ``population`` archs
   seen so far; each child is a fresh random candidate with probability 0.5, else a mutation of a parent drawn
   by roulette (weights fitness − min): layers ±1 (p .25), hidden ±1 step (p .5), FFN ±1 or 2 steps (p .5),
   heads ±1 or 2 choices (p .25), redrawn until feasible and unseen; no crossover. Both spend exactly
   ``n_evals`` calls of ``fitness_fn`` (fewer only when fewer feasible candidates exist, equally for both).
   AutoTinyBERT's fitness is fine-tuned task score; :func:`proxy_fitness` uses the inherited weights'
   dev metric (accuracy for classifiers, −loss otherwise), optionally after a short fine-tune through fit().
4. **Extraction**: :func:`subnet` returns a standalone TransformerLM (extract.py's leading-slice path).
5. **Hand-designed baseline**: :func:`hand_designed_arch` picks a conventional shape (fixed depth and heads,
   d_ff ≈ 4·d) whose predicted latency is closest to a target; the benchmark measures both.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..grow.index_maps import remap
from ..model.attention import rope_tables
from ..model.config import ModelConfig
from ..model.transformer import ModelOutput, TransformerLM
from .errors import CompressionError
from .extract import choose_units, extract, extraction_plan

__all__ = ["Arch", "SearchSpace", "arch_config", "sample_arch", "SubnetView", "SupernetLoss", "train_supernet",
           "subnet", "measure_arch_latencies", "LatencyPredictor", "fit_latency_predictor", "random_search",
           "evolutionary_search", "proxy_fitness", "hand_designed_arch"]


# ---------------------------------------------------------------------------- architectures and the space
@dataclass(frozen=True, order=True)
class Arch:
    """One sub-architecture. ``n_kv_heads`` follows from the super-model's grouping (see :func:`arch_config`)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Arch":
        return cls(int(data["n_layers"]), int(data["d_model"]), int(data["n_heads"]), int(data["d_ff"]))


def arch_config(base: ModelConfig, arch: Arch) -> ModelConfig:
    """The sub-model's ModelConfig: ``base`` (the super-model's) with the arch's sizes; kv heads keep the
    super-model's query-per-kv ratio."""
    R = base.n_heads // base.n_kv_heads
    if arch.n_heads % R:
        raise CompressionError(f"{arch}: n_heads={arch.n_heads} is not a multiple of the super-model's "
                               f"{R} query heads per kv head")
    return base.replace(name=f"sub-L{arch.n_layers}-d{arch.d_model}-h{arch.n_heads}-f{arch.d_ff}",
                        n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads,
                        n_kv_heads=arch.n_heads // R, d_ff=arch.d_ff)


def _range(spec: Sequence[int], what: str) -> list[int]:
    lo, hi, step = (list(spec) + [1])[:3] if len(spec) == 2 else list(spec)
    if not (0 < lo <= hi and step > 0):
        raise CompressionError(f"search space {what}={tuple(spec)}: use (min, max[, step]) with 0 < min <= max "
                               f"and step > 0")
    return list(range(lo, hi + 1, step))


@dataclass
class SearchSpace:
    """Sub-architectures of the super-model ``base`` (its config is the maximal shape).

    ``layers=(min, max)``, ``hidden=(min, max, step)``, ``heads=(h1, h2, ...)``, ``ffn=(min, max, step)``.
    Candidates are every combination whose head_dim d/h divides evenly, is at most the super-model's head_dim
    (even with RoPE), and whose heads keep the super-model's kv grouping. Maxima must not exceed ``base``.
    """

    base: ModelConfig
    layers: tuple[int, int]
    hidden: tuple[int, int, int]
    heads: tuple[int, ...]
    ffn: tuple[int, int, int]

    def __post_init__(self) -> None:
        if isinstance(self.base, Mapping):
            self.base = ModelConfig.from_dict(dict(self.base))
        self.layers, self.hidden, self.ffn = tuple(self.layers), tuple(self.hidden), tuple(self.ffn)
        self.heads = tuple(sorted(set(int(h) for h in self.heads)))
        b = self.base
        over = [f"{what} max {vals[-1]} > super-model {have}" for what, vals, have in (
            ("layers", self.layer_choices, b.n_layers), ("hidden", self.hidden_choices, b.d_model),
            ("heads", list(self.heads), b.n_heads), ("ffn", self.ffn_choices, b.d_ff)) if vals and vals[-1] > have]
        if over:
            raise CompressionError(f"the search space exceeds the super-model: {', '.join(over)}; shrink the space "
                                   f"or build a larger super-model")
        if not self.heads or min(self.heads) < 1:
            raise CompressionError(f"search space heads={self.heads}: give at least one positive head count")
        if not self.candidates():
            raise CompressionError(
                f"the search space has no valid architecture: every hidden size in {self.hidden} must be divisible "
                f"by a head count in {self.heads} with head_dim <= {b.head_dim}; adjust hidden step or heads")

    @classmethod
    def for_model(cls, base: ModelConfig, *, layers=None, hidden=None, heads=None, ffn=None) -> "SearchSpace":
        """Defaults: layers 1..L, hidden d/4..d in steps of the head count (so head_dim varies by 1), heads = the
        super-model's, FFN d_ff/8..d_ff in steps of d_ff/16 (AutoTinyBERT's KD mode: fixed heads)."""
        H = base.n_heads
        step = 2 * H if base.position == "rope" else H
        lo = max(step, (base.d_model // 4) // step * step)
        return cls(base, tuple(layers or (1, base.n_layers)), tuple(hidden or (lo, base.d_model, step)),
                   tuple(heads or (H,)), tuple(ffn or (max(1, base.d_ff // 8), base.d_ff, max(1, base.d_ff // 16))))

    @property
    def layer_choices(self) -> list[int]:
        return _range(self.layers, "layers")

    @property
    def hidden_choices(self) -> list[int]:
        return _range(self.hidden, "hidden")

    @property
    def ffn_choices(self) -> list[int]:
        return _range(self.ffn, "ffn")

    def valid(self, arch: Arch) -> bool:
        b = self.base
        R = b.n_heads // b.n_kv_heads
        if arch.d_model % arch.n_heads or arch.n_heads % R:
            return False
        hd = arch.d_model // arch.n_heads
        return hd <= b.head_dim and not (b.position == "rope" and hd % 2)

    def candidates(self) -> list[Arch]:
        if not hasattr(self, "_cands"):
            self._cands = [Arch(L, d, h, f) for L in self.layer_choices for d in self.hidden_choices
                           for h in self.heads for f in self.ffn_choices if self.valid(Arch(L, d, h, f))]
            self._cand_set = set(self._cands)
        return self._cands

    def contains(self, arch: Arch) -> bool:
        self.candidates()
        return arch in self._cand_set

    def max_arch(self) -> Arch:
        return max(self.candidates(), key=lambda a: (a.n_layers, a.d_model, a.d_ff, a.n_heads))

    def arch_config(self, arch: Arch) -> ModelConfig:
        return arch_config(self.base, arch)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "layers": list(self.layers), "hidden": list(self.hidden),
                "heads": list(self.heads), "ffn": list(self.ffn)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        return cls(ModelConfig.from_dict(dict(data["base"])), tuple(data["layers"]), tuple(data["hidden"]),
                   tuple(data["heads"]), tuple(data["ffn"]))


def sample_arch(space: SearchSpace, rng: random.Random) -> Arch:
    """A uniform draw from the space's valid candidates (``rng``: a ``random.Random``)."""
    cands = space.candidates()
    return cands[rng.randrange(len(cands))]


# ---------------------------------------------------------------------------- sub-models of the super-model
_PLANS: dict[tuple, Any] = {}


def _leading_plan(super_cfg: ModelConfig, sub_cfg: ModelConfig):
    key = (super_cfg.to_json(), sub_cfg.to_json())
    if key not in _PLANS:
        if len(_PLANS) > 256:
            _PLANS.clear()
        choice = choose_units(super_cfg, sub_cfg, "leading", layers="bottom")
        with torch.device("meta"):
            shell = TransformerLM(sub_cfg)
        plan = extraction_plan(super_cfg, sub_cfg, choice)
        # maps that are a prefix on every dim are plain slices: take a view instead of an index_select copy
        slices = {}
        for name, pm in plan.params.items():
            if all(m is None or torch.equal(m.index, torch.arange(m.n_target)) for m in pm.maps):
                slices[name] = tuple(slice(None) if m is None else slice(0, m.n_target) for m in pm.maps)
        _PLANS[key] = (plan, shell, slices)
    return _PLANS[key]


class SubnetView:
    """A callable with the model's forward signature that runs sub-architecture ``arch`` of ``super_model``
    on leading slices of its (shared, trainable) parameters; see the module docstring."""

    def __init__(self, super_model: TransformerLM, arch: Arch) -> None:
        self.super_model = super_model
        self.arch = arch
        self.config = arch_config(super_model.config, arch)
        self.plan, self.shell, self._slices = _leading_plan(super_model.config, self.config)

    @property
    def training(self) -> bool:
        return self.super_model.training

    def tensors(self) -> dict[str, torch.Tensor]:
        own = dict(self.super_model.named_parameters())
        out = {name: own[pm.source][self._slices[name]] if name in self._slices else remap(own[pm.source], pm.maps)
               for name, pm in self.plan.params.items()}
        if self.config.position == "rope":
            device = next(iter(own.values())).device
            out["rope_cos"], out["rope_sin"] = rope_tables(self.config, device=device)
        return out

    def __call__(self, *args, **kwargs) -> ModelOutput:
        self.shell.train(self.super_model.training)
        return functional_call(self.shell, self.tensors(), args, kwargs, strict=False)

    forward = __call__


def subnet(super_model: TransformerLM, arch: Arch | Mapping[str, int]) -> TransformerLM:
    """The standalone TransformerLM of ``arch`` (a copy of the super-model's leading slices)."""
    arch = arch if isinstance(arch, Arch) else Arch.from_dict(arch)
    cfg = arch_config(super_model.config, arch)
    return extract(super_model, cfg, method="leading", layers="bottom").model


class SupernetLoss:
    """``fit`` loss function *and* callback: samples the sub-architecture of each step (seeded by the step),
    runs ``inner(view, batch)`` on it (default: the model's own loss), and evaluates the full super-model."""

    def __init__(self, space: SearchSpace, seed: int = 0, inner: Callable | None = None) -> None:
        from ..train.loop import model_loss

        self.space, self.seed, self.inner = space, seed, inner or model_loss
        self.step = 0
        self.archs_seen: list[Arch] = []

    def arch_at(self, step: int) -> Arch:
        from ..data.batches import derive_seed

        return sample_arch(self.space, random.Random(derive_seed("supernet", self.seed, step)))

    def on_step_begin(self, state) -> None:
        self.step = state.step

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        from ..train.parallel import unwrap

        raw = unwrap(model)
        if not raw.training:  # fit's evaluation: the whole super-model
            return self.inner(raw, batch)
        return self.inner(SubnetView(raw, self.arch_at(self.step)), batch)


def train_supernet(super_model: TransformerLM, data: Any, args: Any, space: SearchSpace, *,
                   loss_fn: Callable | None = None, seed: int | None = None, callbacks: Iterable[Any] = (),
                   tokenizer_json: str | None = None, lineage: Mapping[str, Any] | None = None,
                   extra_state: Mapping[str, Any] | None = None):
    """Train the weight-shared super-model through ``fit`` (single process); returns fit's FitResult.

    ``loss_fn(view, batch)`` is run on the sampled sub-model (a :class:`SubnetView`, callable like the model);
    default: the model's own loss. ``seed`` (default ``args.seed``) seeds the arch sampling."""
    from ..train import checkpoint as ckpt
    from ..train import flops as flops_mod
    from ..train.loop import fit

    sizes = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")
    if any(getattr(super_model.config, k) != getattr(space.base, k) for k in sizes):
        raise CompressionError("the super-model's shape differs from the search space's base config; build the "
                               "super-model as TransformerLM(space.base)")
    loss = SupernetLoss(space, args.seed if seed is None else seed, loss_fn)
    if args.flops_per_step is None:
        start = 0
        if args.out_dir and args.resume == "auto" and ckpt.has_trainer_state(args.out_dir):
            start = int(json.loads((Path(args.out_dir) / ckpt.TRAINER_FILE).read_text())["step"])
        B, T = (int(n) for n in data.train_batch(0)["input_ids"].shape)
        per = [flops_mod.training_flops_per_token(space.arch_config(loss.arch_at(s)), T) * B * T
               for s in range(start, max(args.max_steps, start + 1))]
        args = dataclasses.replace(args, flops_per_step=sum(per) / len(per))
    lin = {"verb": "supernet", "space": space.to_dict(), "arch_seed": loss.seed, **(lineage or {})}
    extra = {"supernet_space": space.to_dict(), **(extra_state or {})}
    return fit(super_model, loss, data, args, [loss, *callbacks], tokenizer_json=tokenizer_json, lineage=lin,
               extra_state=extra)


# ---------------------------------------------------------------------------- latency
def measure_arch_latencies(space: SearchSpace, archs: Sequence[Arch], *, batch_size: int = 1, seq_len: int = 128,
                           threads: int = 1, warmup: int = 3, runs: int = 10, progress: bool = True,
                           stat: str = "median_ms") -> list[float]:
    """Measured forward latency (ms, ``stat`` of measure_latency's dict) of each arch, randomly initialised."""
    from .latency import measure_latency

    it: Iterable = archs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(archs, desc="latency", unit="arch")
    out = []
    for arch in it:
        cfg = space.arch_config(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = TransformerLM(cfg)
        res = measure_latency(model, batch_size=batch_size, seq_len=min(seq_len, cfg.max_seq_len), threads=threads,
                              warmup=warmup, runs=runs)
        out.append(float(res[stat]))
    return out


def arch_features(arch: Arch, vocab_size: int = 0) -> list[float]:
    """Cost-model features (see the module docstring); scaled to O(1) by the predictor."""
    L, d, h, f = arch.n_layers, arch.d_model, arch.n_heads, arch.d_ff
    return [L, L * d, L * d * d, L * d * f, L * f, L * h, d]


def _nnls(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||Ax - b|| subject to x >= 0 (Lawson-Hanson active set; float64)."""
    m, n = A.shape
    tol = 10 * torch.finfo(A.dtype).eps * float(A.abs().sum(0).max()) * max(m, n)
    P = torch.zeros(n, dtype=torch.bool)
    x = torch.zeros(n, dtype=A.dtype)
    w = A.T @ (b - A @ x)
    for _ in range(3 * n):
        if bool(P.all()) or float(w[~P].max()) <= tol:
            break
        P[int(torch.where(~P, w, torch.full_like(w, -float("inf"))).argmax())] = True
        while True:
            z = torch.zeros(n, dtype=A.dtype)
            z[P] = torch.linalg.lstsq(A[:, P], b[:, None]).solution[:, 0]
            if bool((z[P] > 0).all()):
                break
            neg = P & (z <= 0)
            alpha = float((x[neg] / (x[neg] - z[neg])).min())
            x = x + alpha * (z - x)
            P = P & (x > tol)
        x = z
        w = A.T @ (b - A @ x)
    return x


class LatencyPredictor:
    """Latency (ms) as a non-negative combination of :func:`arch_features` plus a non-negative overhead:
    every term is a cost, so predictions are positive and grow with every size (a small ridge penalty
    ``alpha`` on the RMS-scaled features keeps the fit stable with few samples)."""

    def __init__(self, alpha: float = 1e-6) -> None:
        self.alpha = alpha
        self.coef: torch.Tensor | None = None

    def _z(self, archs: Sequence[Arch]) -> torch.Tensor:
        x = torch.tensor([arch_features(a) for a in archs], dtype=torch.float64) / self.scale
        return torch.cat([torch.ones(len(archs), 1, dtype=torch.float64), x], 1)

    def fit(self, archs: Sequence[Arch], ms: Sequence[float]) -> "LatencyPredictor":
        archs = [a if isinstance(a, Arch) else Arch.from_dict(a) for a in archs]
        if len(archs) != len(ms) or len(archs) < 2:
            raise CompressionError(f"the latency predictor needs >= 2 (arch, ms) pairs of equal count, got "
                                   f"{len(archs)} archs and {len(ms)} latencies")
        x = torch.tensor([arch_features(a) for a in archs], dtype=torch.float64)
        self.scale = x.square().mean(0).sqrt().clamp(min=1e-12)
        z, y = self._z(archs), torch.tensor(list(ms), dtype=torch.float64)
        k = z.shape[1]
        ridge = (self.alpha * len(archs)) ** 0.5 * torch.eye(k, dtype=torch.float64)[1:]  # intercept unpenalised
        self.coef = _nnls(torch.cat([z, ridge]), torch.cat([y, torch.zeros(k - 1, dtype=torch.float64)]))
        return self

    def predict_many(self, archs: Sequence[Arch]) -> list[float]:
        if self.coef is None:
            raise CompressionError("the latency predictor is not fitted; call .fit(archs, ms) first")
        return (self._z([a if isinstance(a, Arch) else Arch.from_dict(a) for a in archs]) @ self.coef).tolist()

    def predict(self, arch: Arch | Mapping[str, int]) -> float:
        return self.predict_many([arch])[0]

    def mape(self, archs: Sequence[Arch], ms: Sequence[float]) -> float:
        """Mean absolute percentage error (in %) on (archs, measured ms)."""
        pred = self.predict_many(archs)
        return 100.0 * sum(abs(p - y) / y for p, y in zip(pred, ms)) / max(len(ms), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "nonneg-ridge", "alpha": self.alpha, "coef": self.coef.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyPredictor":
        p = cls(float(data["alpha"]))
        p.coef, p.scale = (torch.tensor(data[k], dtype=torch.float64) for k in ("coef", "scale"))
        return p


def fit_latency_predictor(archs: Sequence[Arch], ms: Sequence[float], *, holdout: float = 0.2,
                          seed: int = 0) -> tuple[LatencyPredictor, dict[str, Any]]:
    """Fit on a random (1 − holdout) split, report MAPE on both parts; returns (predictor, report)."""
    n = len(archs)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = int(round(holdout * n)) if n >= 5 else 0
    hold, train = order[:n_hold], order[n_hold:]
    pred = LatencyPredictor().fit([archs[i] for i in train], [ms[i] for i in train])
    report = {"n_train": len(train), "n_holdout": len(hold),
              "train_mape": pred.mape([archs[i] for i in train], [ms[i] for i in train]),
              "holdout_mape": pred.mape([archs[i] for i in hold], [ms[i] for i in hold]) if hold else None}
    return pred, report


# ---------------------------------------------------------------------------- search
def _feasible(space: SearchSpace, predictor: LatencyPredictor, max_latency_ms: float,
              min_latency_ms: float | None) -> tuple[list[Arch], dict[Arch, float]]:
    cands = space.candidates()
    pred = dict(zip(cands, predictor.predict_many(cands)))
    ok = [a for a in cands if pred[a] <= max_latency_ms and (min_latency_ms is None or pred[a] >= min_latency_ms)]
    if not ok:
        fastest = min(pred.values())
        raise CompressionError(
            f"no architecture satisfies the latency constraint: the fastest candidate is predicted at "
            f"{fastest:.3g} ms > max_latency_ms={max_latency_ms:g}"
            + (f" (or the window's lower bound {min_latency_ms:g} ms excludes the rest)" if min_latency_ms else "")
            + f"; raise --max-latency-ms to at least {fastest:.3g} or shrink the space's smallest sizes")
    return ok, pred


def _record(history: list, arch: Arch, fitness: float, pred_ms: float, origin: str) -> None:
    history.append({"eval": len(history), "arch": arch.to_dict(), "fitness": float(fitness),
                    "pred_ms": float(pred_ms), "origin": origin})


def _result(history: list) -> dict[str, Any]:
    best = max(history, key=lambda h: (h["fitness"], -h["eval"]))
    return {"best_arch": Arch.from_dict(best["arch"]), "best_fitness": best["fitness"], "history": history,
            "n_evals": len(history)}


def random_search(space: SearchSpace, fitness_fn: Callable[[Arch], float], predictor: LatencyPredictor,
                  max_latency_ms: float, n_evals: int, seed: int = 0, *, min_latency_ms: float | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """``n_evals`` distinct feasible candidates drawn uniformly; returns dict(best_arch, best_fitness, history,
    n_evals) (best_arch is an :class:`Arch`; history entries hold arch dicts, fitness, predicted ms)."""
    if n_evals < 1:
        raise CompressionError(f"n_evals={n_evals} must be >= 1")
    ok, pred = _feasible(space, predictor, max_latency_ms, min_latency_ms)
    rng = random.Random(seed)
    picks = rng.sample(ok, min(n_evals, len(ok)))
    history: list = []
    for arch in _bar(picks, progress, "random search"):
        _record(history, arch, fitness_fn(arch), pred[arch], "random")
    return _result(history)


def _bar(it, progress: bool, desc: str):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="eval")


def _mutate(arch: Arch, space: SearchSpace, rng: random.Random) -> Arch:
    Ls, ds, hs, fs = space.layer_choices, space.hidden_choices, list(space.heads), space.ffn_choices

    def shift(vals: list[int], v: int, steps: Sequence[int]) -> int:
        i = min(range(len(vals)), key=lambda k: abs(vals[k] - v)) + rng.choice(steps) * rng.choice((-1, 1))
        return vals[min(max(i, 0), len(vals) - 1)]

    L, d, h, f = arch.n_layers, arch.d_model, arch.n_heads, arch.d_ff
    if rng.random() < 0.25:
        L = shift(Ls, L, (1,))
    if rng.random() < 0.5:
        d = shift(ds, d, (1,))
    if rng.random() < 0.5:
        f = shift(fs, f, (1, 2))
    if rng.random() < 0.25:
        h = shift(hs, h, (1, 2))
    return Arch(L, d, h, f)


def evolutionary_search(space: SearchSpace, fitness_fn: Callable[[Arch], float], predictor: LatencyPredictor,
                        max_latency_ms: float, n_evals: int, seed: int = 0, *, population: int | None = None,
                        p_random: float = 0.5, min_latency_ms: float | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """AutoTinyBERT's evolved search (module docstring) with exactly ``n_evals`` fitness evaluations
    (bounded by the number of feasible candidates); same return as :func:`random_search`."""
    if n_evals < 1:
        raise CompressionError(f"n_evals={n_evals} must be >= 1")
    ok, pred = _feasible(space, predictor, max_latency_ms, min_latency_ms)
    feasible = set(ok)
    budget = min(n_evals, len(ok))
    pop_size = population or max(2, min(25, budget // 4))
    rng = random.Random(seed)
    seen: set[Arch] = set()
    history: list = []
    fit_of: dict[Arch, float] = {}

    def fresh() -> Arch:
        while True:  # terminates: fewer than len(ok) archs have been seen while budget remains
            a = ok[rng.randrange(len(ok))]
            if a not in seen:
                return a

    bar = _bar(range(budget), progress, "evolutionary search")
    for _ in bar:
        origin = "random"
        if len(history) < pop_size or rng.random() < p_random:
            child = fresh()
        else:
            popn = sorted(fit_of, key=lambda a: fit_of[a], reverse=True)[:pop_size]
            lo = min(fit_of[a] for a in popn)
            weights = [fit_of[a] - lo for a in popn]
            if sum(weights) <= 0:
                weights = [1.0] * len(popn)
            parent = rng.choices(popn, weights=weights)[0]
            child = None
            for _ in range(100):
                cand = _mutate(parent, space, rng)
                if cand in feasible and cand not in seen:
                    child, origin = cand, "mutation"
                    break
            if child is None:
                child = fresh()
        seen.add(child)
        fit_of[child] = float(fitness_fn(child))
        _record(history, child, fit_of[child], pred[child], origin)
    return _result(history)


def confirm_by_measurement(result: Mapping[str, Any], measure_ms: Callable[[Arch], float], max_latency_ms: float,
                           *, min_latency_ms: float | None = None, top_k: int = 5) -> dict[str, Any]:
    """Re-check a search's pick against MEASURED latency: the ``top_k`` fittest evaluated candidates are
    timed with ``measure_ms`` and the fittest whose measured latency lies in [min_latency_ms, max_latency_ms]
    becomes ``best_arch`` (ties: earlier evaluation). When none does, the search's own pick stays, flagged.

    Reconstruction: AutoTinyBERT trusts its predictor's window; with a predictor a few tens of percent off
    (small models, a shared machine) the pick can land far from the target latency, which defeats an
    equal-latency comparison. Timing a handful of finalists costs no fitness evaluations, so "equal
    evaluations" between searches still holds. Returns a copy of ``result`` with ``confirmed`` details."""
    if top_k < 1:
        raise CompressionError(f"top_k={top_k} must be >= 1")
    hist = sorted(result["history"], key=lambda h: (-h["fitness"], h["eval"]))[:top_k]
    checked = []
    for h in hist:
        arch = Arch.from_dict(h["arch"])
        ms = float(measure_ms(arch))
        ok = ms <= max_latency_ms and (min_latency_ms is None or ms >= min_latency_ms)
        checked.append({"arch": h["arch"], "fitness": h["fitness"], "pred_ms": h.get("pred_ms"),
                        "measured_ms": ms, "in_window": ok})
    inside = [c for c in checked if c["in_window"]]
    out = dict(result)
    out["search_best_arch"], out["search_best_fitness"] = result["best_arch"], result["best_fitness"]
    if inside:
        out["best_arch"], out["best_fitness"] = Arch.from_dict(inside[0]["arch"]), inside[0]["fitness"]
    out["confirmed"] = {"top_k": top_k, "window_ms": [min_latency_ms, max_latency_ms], "checked": checked,
                        "in_window": bool(inside)}
    return out


# ---------------------------------------------------------------------------- fitness and baselines
def proxy_fitness(super_model: TransformerLM, batches: Sequence[Mapping[str, torch.Tensor]], *,
                  metric: str = "auto", finetune_data: Any = None,
                  finetune_args: Any = None) -> Callable[[Arch], float]:
    """Fitness = dev metric of the sub-model with inherited weights (accuracy for classifiers, −loss otherwise;
    ``metric='accuracy'|'neg_loss'`` forces one). With ``finetune_data`` and ``finetune_args`` (TrainArgs,
    no out_dir) a standalone copy is first fine-tuned through ``fit`` for ``finetune_args.max_steps`` steps."""
    from ..train.loop import evaluate, fit, model_loss

    if metric == "auto":
        metric = "accuracy" if super_model.config.head == "cls" else "neg_loss"
    if metric not in ("accuracy", "neg_loss"):
        raise CompressionError(f"metric={metric!r}: auto | accuracy | neg_loss")
    batches = list(batches)
    if not batches:
        raise CompressionError("proxy fitness needs at least one dev batch")
    device = next(super_model.parameters()).device

    def fitness(arch: Arch) -> float:
        if finetune_data is not None and finetune_args is not None:
            model = subnet(super_model, arch)
            fit(model, model_loss, finetune_data, dataclasses.replace(finetune_args, out_dir=None, progress=False))
        else:
            model = SubnetView(super_model, arch)
        was = super_model.training
        super_model.eval()
        try:
            with torch.no_grad():
                m = _evaluate_view(model, batches, device) if isinstance(model, SubnetView) else \
                    evaluate(model, model_loss, batches, device)
        finally:
            super_model.train(was)
        if metric == "accuracy":
            if "val_accuracy" not in m:
                raise CompressionError("metric 'accuracy' needs classification batches (a cls super-model)")
            return float(m["val_accuracy"])
        return -float(m["val_loss"])

    return fitness


def _evaluate_view(view: SubnetView, batches, device) -> dict[str, float]:
    from ..train.loop import model_loss

    total, sums = 0, {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, extra = model_loss(view, batch)
        w = batch["input_ids"].shape[0]
        total += w
        sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * w
        for k, v in extra.items():
            sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * w
    return {k: v / total for k, v in sums.items()}


def hand_designed_arch(space: SearchSpace, predictor: LatencyPredictor, target_ms: float, *,
                       n_layers: int | None = None, n_heads: int | None = None, ffn_ratio: float = 4.0) -> Arch:
    """A conventional shape at a latency: depth ``n_layers`` (default the space's max), ``n_heads`` (default the
    most heads valid for each hidden size), d_ff the choice nearest ``ffn_ratio``·d, and the hidden size whose
    predicted latency is closest to ``target_ms``. Measure it (:func:`measure_arch_latencies`) before comparing."""
    L = n_layers or space.layer_choices[-1]
    opts = [a for a in space.candidates() if a.n_layers == L and (n_heads is None or a.n_heads == n_heads)]
    if not opts:
        raise CompressionError(f"no candidate with n_layers={L}" + (f", n_heads={n_heads}" if n_heads else "")
                               + " in the search space")
    heads = {}
    for a in opts:
        heads[a.d_model] = max(heads.get(a.d_model, 0), a.n_heads)
    pick: dict[int, Arch] = {}
    for a in opts:
        if a.n_heads != heads[a.d_model]:
            continue
        cur = pick.get(a.d_model)
        if cur is None or abs(a.d_ff - ffn_ratio * a.d_model) < abs(cur.d_ff - ffn_ratio * a.d_model):
            pick[a.d_model] = a
    pool = sorted(pick.values())
    preds = predictor.predict_many(pool)
    return min(zip(pool, preds), key=lambda t: (abs(t[1] - target_ms), t[0]))[0]


def arch_math(arch: Arch, space: SearchSpace) -> dict[str, float]:
    """Parameter count and analytic forward FLOPs per token (the one ruler) of an arch."""
    from ..train import flops as flops_mod

    cfg = space.arch_config(arch)
    with torch.device("meta"):
        n = TransformerLM(cfg).num_parameters()
    return {"params": n, "forward_flops_per_token": flops_mod.forward_flops_per_token(cfg, min(128, cfg.max_seq_len))}
