"""Searching the student→teacher layer mapping (Jiao et al. 2020, arXiv 2012.06153).

The paper (abstract only available) runs a genetic algorithm over layer mappings for task-agnostic
distillation, scoring each candidate in a *proxy setting*: general distillation on a small sampled corpus,
then a quick fine-tune on representative tasks; the best mapping is then used at full scale. Operators,
encoding and proxy sizes are unpublished, so this module is a **reconstruction**:

* Chromosome c ∈ {0..N-1}^M (or with ``allow_skip`` also ``None``: that student block is unsupervised);
  gene m is the 0-based teacher block that supervises student block m — a :class:`morphlm.surgery.LayerMap`,
  the convention of every verb. Internally a skipped gene is -1 (so genes stay integers for ±1 steps and
  sorting); every mapping handed to a fitness function or written to a report uses ``None``. ``monotone``
  restricts the space to non-decreasing maps (children are repaired by sorting their supervised genes).
* Tournament selection, uniform crossover, per-gene mutation (a ±1 step or a uniform resample, half each),
  elitism (the ``elitism`` best survive unchanged, so the best fitness never decreases).
* A fitness cache: a mapping is evaluated once; ``budget`` counts distinct evaluations, and random search
  gets exactly the same number (a fair comparison at equal proxy cost). The uniform / top / bottom maps are
  scored as fixed baselines.

Fitness functions are plain callables ``mapping -> float`` (higher is better); :class:`ProxyEvaluator` is
the proxy described above (general distillation with the candidate map, then fine-tuning, dev accuracy).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.batches import derive_seed
from ..surgery import is_monotone
from .distill import distill
from .distill_loss import DistillConfig, teacher_layer_map
from .errors import CompressionError

log = logging.getLogger("morphlm.compress.layermap")

__all__ = ["GAConfig", "SearchResult", "FitnessCache", "genetic_search", "random_search", "baseline_mappings",
           "all_mappings", "search_space_size", "run_layermap_search", "ProxySetting", "ProxyEvaluator"]

Mapping = tuple[int, ...]  # internal: 0-based teacher blocks, _SKIP = unsupervised
_SKIP = -1


def _key(mapping: Sequence[int | None]) -> Mapping:
    """A user/public mapping (``None`` = unsupervised) → the internal integer tuple."""
    return tuple(_SKIP if g is None else int(g) for g in mapping)


def _public(key: Sequence[int]) -> list[int | None]:
    """The internal tuple → a LayerMap-convention list (``None`` = unsupervised)."""
    return [None if g == _SKIP else int(g) for g in key]



@dataclass
class GAConfig:
    population: int = 10
    budget: int = 30  # distinct fitness evaluations (proxy runs) for the GA; random search gets the same
    elitism: int = 2
    tournament: int = 3
    crossover_rate: float = 0.9
    mutation_rate: float | None = None  # per gene; None -> 1/M
    allow_skip: bool = False  # genes may be None (no supervision for that student block)
    monotone: bool = False
    seed: int = 0
    max_generations: int = 200

    def validate(self) -> None:
        if self.population < 2:
            raise CompressionError(f"population={self.population} must be >= 2")
        if self.budget < 1:
            raise CompressionError(f"budget={self.budget} must be >= 1 evaluation")
        if not 0 <= self.elitism < self.population:
            raise CompressionError(f"elitism={self.elitism} must be in [0, population={self.population})")
        if self.tournament < 1:
            raise CompressionError(f"tournament={self.tournament} must be >= 1")
        if not 0.0 <= self.crossover_rate <= 1.0:
            raise CompressionError(f"crossover_rate={self.crossover_rate} must be in [0, 1]")
        if self.mutation_rate is not None and not 0.0 <= self.mutation_rate <= 1.0:
            raise CompressionError(f"mutation_rate={self.mutation_rate} must be in [0, 1]")


@dataclass
class SearchResult:
    method: str
    best: list[int | None]
    best_fitness: float
    n_evaluations: int  # distinct mappings this method evaluated
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per distinct evaluation, in order
    generations: list[dict[str, Any]] = field(default_factory=list)  # GA only: per-generation best/mean

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FitnessCache:
    """Memoises a fitness function; ``calls`` counts real evaluations (cache misses)."""

    def __init__(self, fn: Callable[[Sequence[int]], float]) -> None:
        self.fn = fn
        self.values: dict[Mapping, float] = {}
        self.calls = 0

    def __call__(self, mapping: Sequence[int | None]) -> float:
        key = _key(mapping)
        if key not in self.values:
            self.calls += 1
            value = float(self.fn(_public(key)))
            if math.isnan(value):
                raise CompressionError(f"fitness of layer map {_public(key)} is NaN; check the proxy setting "
                                       f"(learning rate, steps)")
            self.values[key] = value
        return self.values[key]


class _Counter:
    """A method's view of the shared cache: counts the distinct mappings *this* method asked for."""

    def __init__(self, cache: FitnessCache, method: str) -> None:
        self.cache, self.method = cache, method
        self.seen: dict[Mapping, float] = {}
        self.history: list[dict[str, Any]] = []

    def __call__(self, mapping: Mapping, generation: int | None = None) -> float:
        if mapping in self.seen:
            return self.seen[mapping]
        value = self.cache(mapping)
        self.seen[mapping] = value
        rec = {"eval": len(self.history) + 1, "mapping": _public(mapping), "fitness": value,
               "best_so_far": max(value, self.history[-1]["best_so_far"]) if self.history else value}
        if generation is not None:
            rec["generation"] = generation
        self.history.append(rec)
        return value

    @property
    def n(self) -> int:
        return len(self.seen)

    def best(self) -> tuple[Mapping, float]:
        m = max(self.seen, key=lambda k: (self.seen[k], tuple(-g for g in k)))
        return m, self.seen[m]


# ---------------------------------------------------------------------------------------------- the space
def _gene_range(n_teacher: int, allow_skip: bool) -> tuple[int, int]:
    return (_SKIP if allow_skip else 0), n_teacher - 1


def search_space_size(n_student: int, n_teacher: int, *, monotone: bool = False, allow_skip: bool = False) -> int:
    if monotone:
        # non-decreasing supervised genes with skips anywhere: Σ_k C(M,k)·C(N+k-1,k) over k supervised genes
        if allow_skip:
            return sum(math.comb(n_student, k) * math.comb(n_teacher + k - 1, k) for k in range(n_student + 1))
        return math.comb(n_teacher + n_student - 1, n_student)
    lo, hi = _gene_range(n_teacher, allow_skip)
    return (hi - lo + 1) ** n_student


def all_mappings(n_student: int, n_teacher: int, *, monotone: bool = False,
                 allow_skip: bool = False) -> list[list[int | None]]:
    """Every mapping of the space (for exhaustive ground truth at proxy scale, e.g. 7³ = 343 for 3 of 6 with
    skips), as LayerMap-convention lists."""
    lo, hi = _gene_range(n_teacher, allow_skip)
    out = []
    for c in itertools.product(range(lo, hi + 1), repeat=n_student):
        m = _public(c)
        if not monotone or is_monotone(m):
            out.append(m)
    return out


def baseline_mappings(n_student: int, n_teacher: int) -> dict[str, list[int]]:
    """The fixed strategies: uniform, and top/bottom when the student is no deeper than the teacher."""
    out = {"uniform": teacher_layer_map("uniform", n_teacher, n_student).to_list()}
    if n_student <= n_teacher:
        out["top"] = teacher_layer_map("top", n_teacher, n_student).to_list()
        out["bottom"] = teacher_layer_map("bottom", n_teacher, n_student).to_list()
    return out


def _repair(c: list[int], monotone: bool) -> Mapping:
    if monotone:
        nz = iter(sorted(g for g in c if g != _SKIP))
        c = [next(nz) if g != _SKIP else _SKIP for g in c]
    return tuple(c)


def _random_mapping(rng: random.Random, n_student: int, n_teacher: int, cfg: GAConfig) -> Mapping:
    lo, hi = _gene_range(n_teacher, cfg.allow_skip)
    return _repair([rng.randint(lo, hi) for _ in range(n_student)], cfg.monotone)


# ---------------------------------------------------------------------------------------------- searches
def genetic_search(fitness: Callable[[Sequence[int]], float], n_student: int, n_teacher: int,
                   cfg: GAConfig | None = None, *, cache: FitnessCache | None = None) -> SearchResult:
    """GA over layer maps with at most ``cfg.budget`` distinct evaluations (module docstring)."""
    cfg = cfg or GAConfig()
    cfg.validate()
    cache = cache if cache is not None else (fitness if isinstance(fitness, FitnessCache) else FitnessCache(fitness))
    ev = _Counter(cache, "ga")
    rng = random.Random(derive_seed("layermap-ga", cfg.seed, n_student, n_teacher))
    space = search_space_size(n_student, n_teacher, monotone=cfg.monotone, allow_skip=cfg.allow_skip)
    budget = min(cfg.budget, space)
    lo, hi = _gene_range(n_teacher, cfg.allow_skip)
    p_mut = cfg.mutation_rate if cfg.mutation_rate is not None else 1.0 / n_student

    population: list[Mapping] = []
    tries = 0
    while len(population) < min(cfg.population, budget) and tries < 100 * cfg.population:
        tries += 1
        c = _random_mapping(rng, n_student, n_teacher, cfg)
        if c not in population:
            population.append(c)
    for c in population:
        ev(c, generation=0)
    generations = [_gen_record(0, population, ev)]

    def select(pop: list[Mapping]) -> Mapping:
        contenders = [pop[rng.randrange(len(pop))] for _ in range(cfg.tournament)]
        return max(contenders, key=lambda k: ev.seen[k])

    gen = 0
    while ev.n < budget and gen < cfg.max_generations:
        gen += 1
        ranked = sorted(population, key=lambda k: ev.seen[k], reverse=True)
        new_pop: list[Mapping] = ranked[: cfg.elitism]
        attempts = 0
        while len(new_pop) < cfg.population and ev.n < budget:
            attempts += 1
            a, b = select(population), select(population)
            if rng.random() < cfg.crossover_rate:
                child = [a[i] if rng.random() < 0.5 else b[i] for i in range(n_student)]
            else:
                child = list(a)
            for i in range(n_student):
                if rng.random() < p_mut:
                    if rng.random() < 0.5:
                        child[i] = min(hi, max(lo, child[i] + rng.choice((-1, 1))))
                    else:
                        child[i] = rng.randint(lo, hi)
            c = _repair(child, cfg.monotone)
            if c in new_pop and attempts < 50 * cfg.population:
                continue  # keep the population diverse while new children can still be found
            ev(c, generation=gen)
            new_pop.append(c)
        population = new_pop
        generations.append(_gen_record(gen, population, ev))
    best, best_f = ev.best()
    return SearchResult("ga", _public(best), best_f, ev.n, ev.history, generations)


def _gen_record(gen: int, population: list[Mapping], ev: _Counter) -> dict[str, Any]:
    vals = [ev.seen[c] for c in population]
    best = max(population, key=lambda k: ev.seen[k])
    return {"generation": gen, "best": _public(best), "best_fitness": max(vals), "mean_fitness": sum(vals) / len(vals),
            "evaluations": ev.n}


def random_search(fitness: Callable[[Sequence[int]], float], n_student: int, n_teacher: int, n_evals: int, *,
                  monotone: bool = False, allow_skip: bool = False, seed: int = 0,
                  cache: FitnessCache | None = None) -> SearchResult:
    """Uniformly random distinct mappings until ``n_evals`` have been evaluated (or the space is exhausted)."""
    cache = cache if cache is not None else (fitness if isinstance(fitness, FitnessCache) else FitnessCache(fitness))
    ev = _Counter(cache, "random")
    rng = random.Random(derive_seed("layermap-random", seed, n_student, n_teacher))
    space = search_space_size(n_student, n_teacher, monotone=monotone, allow_skip=allow_skip)
    target = min(n_evals, space)
    if space <= 200_000:
        pool = [_key(c) for c in all_mappings(n_student, n_teacher, monotone=monotone, allow_skip=allow_skip)]
        rng.shuffle(pool)
        for c in pool[:target]:
            ev(c)
    else:
        cfg = GAConfig(monotone=monotone, allow_skip=allow_skip)
        while ev.n < target:
            ev(_random_mapping(rng, n_student, n_teacher, cfg))
    best, best_f = ev.best()
    return SearchResult("random", _public(best), best_f, ev.n, ev.history)


def layer_map_string(mapping: Sequence[int | None]) -> str:
    """The ``--layer-map`` form of a mapping: 0-based teacher blocks, ``-`` for an unsupervised student block
    (``[1, None, 3]`` → ``"1,-,3"``); what the search prints and writes as ``best.layer_map``."""
    return ",".join("-" if g is None else str(int(g)) for g in mapping)


def read_layer_map_arg(spec: str) -> str:
    """A ``--layer-map`` value as distill takes it: ``@FILE`` reads the best map of a ``morphlm search layermap``
    report (``best.layer_map``, or ``best.mapping``); any other value is returned unchanged."""
    if not spec.startswith("@"):
        return spec
    path = Path(spec[1:])
    if not path.is_file():
        raise CompressionError(f"--layer-map {spec}: {path} is not a file; pass @REPORT.json written by "
                               f"`morphlm search layermap --out REPORT.json`, or the map itself, e.g. 1,3,5")
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompressionError(f"--layer-map {spec}: {path} is not JSON ({e}); pass a layer-map search report") from None
    best = doc.get("best") if isinstance(doc, dict) else None
    if not isinstance(best, dict) or not ("layer_map" in best or "mapping" in best):
        raise CompressionError(f"--layer-map {spec}: {path} has no best.layer_map; pass a report written by "
                               f"`morphlm search layermap --out REPORT.json`")
    value = best.get("layer_map")
    if isinstance(value, str):
        return value
    mapping = best.get("mapping")
    if not isinstance(mapping, list) or not all(g is None or (isinstance(g, int) and not isinstance(g, bool))
                                                for g in mapping):
        raise CompressionError(f"--layer-map {spec}: best.mapping in {path} is {mapping!r}, not a list of 0-based "
                               f"teacher blocks (null = unsupervised)")
    return layer_map_string(mapping)


def run_layermap_search(fitness: Callable[[Sequence[int]], float], n_student: int, n_teacher: int,
                        cfg: GAConfig | None = None, *, methods: Sequence[str] = ("ga", "random"),
                        exhaustive: bool = False) -> dict[str, Any]:
    """Baselines + GA + random search at the GA's evaluation count (+ optionally every mapping), sharing one
    fitness cache. Returns a JSON-ready report."""
    cfg = cfg or GAConfig()
    cfg.validate()
    bad = set(methods) - {"ga", "random"}
    if bad:
        raise CompressionError(f"unknown search method(s) {sorted(bad)}; use ga and/or random")
    cache = FitnessCache(fitness)
    report: dict[str, Any] = {"n_student": n_student, "n_teacher": n_teacher, "config": dataclasses.asdict(cfg),
                              "space_size": search_space_size(n_student, n_teacher, monotone=cfg.monotone,
                                                              allow_skip=cfg.allow_skip)}
    report["baselines"] = {name: {"mapping": m, "fitness": cache(m)}
                           for name, m in baseline_mappings(n_student, n_teacher).items()}
    n_evals = cfg.budget
    if "ga" in methods:
        ga = genetic_search(fitness, n_student, n_teacher, cfg, cache=cache)
        report["ga"] = ga.to_dict()
        n_evals = ga.n_evaluations
    if "random" in methods:
        report["random"] = random_search(fitness, n_student, n_teacher, n_evals, monotone=cfg.monotone,
                                         allow_skip=cfg.allow_skip, seed=cfg.seed, cache=cache).to_dict()
    if exhaustive:
        every = all_mappings(n_student, n_teacher, monotone=cfg.monotone, allow_skip=cfg.allow_skip)
        scored = sorted(({"mapping": m, "fitness": cache(m)} for m in every), key=lambda r: -r["fitness"])
        report["exhaustive"] = {"n": len(scored), "best": scored[0], "all": scored}
    candidates = [(v["fitness"], v["mapping"], k) for k, v in report["baselines"].items()]
    for k in ("ga", "random"):
        if k in report:
            candidates.append((report[k]["best_fitness"], report[k]["best"], k))
    best = max(candidates, key=lambda r: r[0])
    report["best"] = {"mapping": best[1], "layer_map": layer_map_string(best[1]), "fitness": best[0],
                      "found_by": best[2]}
    report["proxy_evaluations"] = cache.calls
    return report


# ---------------------------------------------------------------------------------------------- the proxy
@dataclass
class ProxySetting:
    """The proxy of one fitness evaluation: ``gd_steps`` of general distillation (emb + att + hid with the
    candidate map) on a small sampled corpus, then ``ft_steps`` of fine-tuning on each task; fitness = mean
    dev accuracy (or mean −dev loss with ``metric='neg_loss'``). Every candidate starts from the same random student (``seed``), so only the map differs."""

    gd_steps: int = 100
    gd_lr: float = 1e-3
    ft_steps: int = 100
    ft_lr: float = 1e-3
    warmup_steps: int = 10
    seed: int = 0
    device: str = "cpu"
    metric: str = "accuracy"  # accuracy | neg_loss (−dev cross entropy: smoother when short fine-tunes tie at chance)
    att_loss: str = "kl"  # the proxy's general-distillation loss forms (DistillConfig's; its defaults)
    hid_loss: str = "normalized"


class ProxyEvaluator:
    """``mapping -> mean dev accuracy`` in the proxy setting. ``gd_data``: a batch source of unlabelled text
    in the teacher's tokenizer; ``tasks``: classification batch sources (``ClassificationBatches``)."""

    def __init__(self, teacher, student_cfg, gd_data, tasks: Sequence[Any], setting: ProxySetting | None = None,
                 n_classes: Sequence[int] | None = None) -> None:
        if not tasks:
            raise CompressionError("the layer-map proxy needs at least one labelled task to score mappings "
                                   "(pass --task-train/--task-val)")
        self.teacher, self.student_cfg, self.gd_data = teacher, student_cfg, gd_data
        self.tasks = list(tasks)
        self.n_classes = list(n_classes) if n_classes is not None else [2] * len(self.tasks)
        self.setting = setting or ProxySetting()
        self.runs = 0

    def __call__(self, mapping: Sequence[int]) -> float:
        from ..model import TransformerLM
        from ..train.loop import fit, model_loss
        from ..train.optim import TrainArgs

        s = self.setting
        if s.metric not in ("accuracy", "neg_loss"):
            raise CompressionError(f"proxy metric {s.metric!r}: use accuracy or neg_loss")
        mapping = teacher_layer_map(list(mapping), self.teacher.config.n_layers, self.student_cfg.n_layers).to_list()
        self.runs += 1
        torch.manual_seed(s.seed)
        student = TransformerLM(self.student_cfg)
        gd_args = TrainArgs(max_steps=s.gd_steps, lr=s.gd_lr, warmup_steps=min(s.warmup_steps, s.gd_steps - 1),
                            schedule="linear", progress=False, eval_at_end=False, seed=s.seed, device=s.device,
                            weight_decay=0.01)
        distill(self.teacher, student, self.gd_data, gd_args,
                DistillConfig(stage="general", layer_map=mapping, teacher_path=None, att_loss=s.att_loss,
                              hid_loss=s.hid_loss))
        body = {k: v for k, v in student.state_dict().items() if k.startswith(("blocks.", "tok_emb", "pos_emb",
                                                                               "seg_emb", "emb_norm", "final_norm"))}
        scores = []
        for task, nc in zip(self.tasks, self.n_classes):
            torch.manual_seed(s.seed)
            clf = TransformerLM(self.student_cfg.replace(head="cls", n_classes=nc))
            clf.load_state_dict(body, strict=False)
            ft_args = TrainArgs(max_steps=s.ft_steps, lr=s.ft_lr, warmup_steps=min(s.warmup_steps, s.ft_steps - 1),
                                schedule="linear", progress=False, seed=s.seed, device=s.device, weight_decay=0.01)
            res = fit(clf, model_loss, task, ft_args)
            m = res.metrics
            if "val_loss" not in m:  # fit stopped early (a stop signal) before its final evaluation
                raise CompressionError(f"the proxy fine-tune of layer map {mapping} stopped at step {res.steps} of "
                                       f"{s.ft_steps} without scoring it (interrupted?); rerun the search")
            scores.append(float(m["val_accuracy"]) if s.metric == "accuracy" else -float(m["val_loss"]))
        fitness = sum(scores) / len(scores)
        log.info("layer map %s: proxy fitness (%s) %.4f", mapping, s.metric, fitness)
        return fitness


def layermap_search_run(teacher: str, student: str, *, corpus: str, task_train: str, task_val: str,
                        cfg: GAConfig | None = None, setting: ProxySetting | None = None,
                        methods: Sequence[str] = ("ga", "random"), exhaustive: bool = False, batch_size: int = 16,
                        seq_len: int = 64, max_bytes: int | None = 400_000, student_overrides: dict | None = None,
                        out: str | None = None, progress: bool = True) -> dict[str, Any]:
    """``morphlm search layermap``: proxy-scored GA vs random search vs fixed maps for one teacher (a
    pretrained lm/mlm checkpoint or HF dir) and one student shape; writes the report JSON to ``out``."""
    from ..io import json_safe, write_json
    from ..provenance import metadata
    from ..data import ClassificationBatches, LMBatches, MLMBatches, load_task, prepare_lm_store
    from ..model import ModelConfig
    from .distill import _student_config, load_teacher

    cfg = cfg or GAConfig()
    setting = setting or ProxySetting()
    for f in (task_train, task_val):
        if not Path(f).exists():
            raise CompressionError(f"task file {f} does not exist; pass TSV/CSV/JSONL files with a label column")
    t_model, tok, t_record = load_teacher(teacher)
    tcfg = t_model.config
    if tcfg.head == "cls":
        raise CompressionError("layer-map search scores task-agnostic distillation: pass a pretrained (lm/mlm) "
                               "teacher, not a fine-tuned classifier")
    fields = _student_config(student, tcfg, dict(student_overrides or {}))
    fields["head"] = tcfg.head
    s_cfg = ModelConfig.from_dict(fields)
    seq_len = min(seq_len, tcfg.max_seq_len, s_cfg.max_seq_len)
    _, store = prepare_lm_store(corpus, tcfg.vocab_size, tokenizer=tok, max_bytes=max_bytes, show_progress=progress)
    if tcfg.head == "mlm":
        gd = MLMBatches(store, batch_size, seq_len, mask_id=tok.mask_id, vocab_size=tok.vocab_size, seed=setting.seed,
                        special_ids=tok.special_ids)
    else:
        gd = LMBatches(store, batch_size, seq_len, seed=setting.seed)
    task = load_task(task_train, task_val)
    task_data = ClassificationBatches(task.train, task.val, tok, batch_size, seq_len, seed=setting.seed)
    evaluator = ProxyEvaluator(t_model, s_cfg, gd, [task_data], setting, n_classes=[task.n_classes])
    bar = None
    if progress:
        from ..progress import progress_bar

        bar = progress_bar(desc="layer maps", unit="eval")

    def fitness(mapping):
        value = evaluator(mapping)
        if bar is not None:
            bar.update(1)
            shown = ",".join("-" if g is None else str(g) for g in mapping)
            bar.set_postfix({"map": shown, "acc": f"{value:.3f}"}, refresh=False)
        return value

    try:
        report = run_layermap_search(fitness, s_cfg.n_layers, tcfg.n_layers, cfg, methods=methods,
                                     exhaustive=exhaustive)
    finally:
        if bar is not None:
            bar.close()
    report.update({"teacher": t_record["path"], "student": s_cfg.to_dict(), "corpus": corpus,
                   "task_train": str(task_train), "task_val": str(task_val),
                   "proxy": dataclasses.asdict(setting), "batch_size": batch_size, "seq_len": seq_len,
                   "metadata": metadata()})
    if out is not None:
        write_json(Path(out), json_safe(report), sort_keys=False)
    return report
