"""AutoTinyBERT (Yin et al., ACL 2021, arXiv 2107.13686): a weight-shared super-model,
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

Modules: :mod:`.space` (Arch, SearchSpace), :mod:`.supernet` (1, 4 and the proxy fitness), :mod:`.latency_model`
(2), :mod:`.search` (3 and 5).
"""

from .latency_model import LatencyPredictor, arch_features, fit_latency_predictor, measure_arch_latencies
from .search import confirm_by_measurement, evolutionary_search, hand_designed_arch, random_search
from .space import Arch, SearchSpace, arch_config, sample_arch
from .supernet import SubnetView, SupernetLoss, proxy_fitness, subnet, train_supernet

__all__ = ["Arch", "SearchSpace", "arch_config", "sample_arch", "SubnetView", "SupernetLoss", "train_supernet",
           "subnet", "measure_arch_latencies", "arch_features", "LatencyPredictor", "fit_latency_predictor",
           "random_search", "evolutionary_search", "confirm_by_measurement", "proxy_fitness", "hand_designed_arch"]
