"""Layer-mapping search: the GA keeps its elite, never re-evaluates a cached mapping, respects the budget,
the space's constraints and random search's equal evaluation count; the proxy evaluator and the
`morphlm search layermap` command run end to end on a tiny teacher."""

import json

import pytest
import torch
from typer.testing import CliRunner

from morphlm.cli import app
from morphlm.compress.errors import CompressionError
from morphlm.surgery import is_monotone
from morphlm.compress.layermap import (FitnessCache, GAConfig, ProxyEvaluator, ProxySetting, all_mappings,
                                       baseline_mappings, genetic_search, random_search, run_layermap_search,
                                       search_space_size)
from morphlm.data import ClassificationBatches, Example, train_tokenizer
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt

from toydata import ToyData

TARGET = (1, 3, 5)  # 0-based teacher blocks (the one LayerMap convention)


def peaked(mapping):
    """A smooth landscape with its single maximum at TARGET."""
    return -float(sum((a - b) ** 2 for a, b in zip(mapping, TARGET)))


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, m):
        self.calls.append(tuple(m))
        return self.fn(m)


def test_space_sizes_match_enumeration():
    for monotone in (False, True):
        for skip in (False, True):
            assert search_space_size(3, 4, monotone=monotone, allow_skip=skip) == \
                len(all_mappings(3, 4, monotone=monotone, allow_skip=skip))
    assert search_space_size(3, 6, allow_skip=True) == 343  # the benchmark's 7³ ground truth
    assert baseline_mappings(3, 6) == {"uniform": [1, 3, 5], "top": [3, 4, 5], "bottom": [0, 1, 2]}


def test_ga_elitism_cache_and_budget():
    fn = Counting(peaked)
    res = genetic_search(fn, 3, 6, GAConfig(population=6, budget=40, elitism=2, seed=1))
    # every real evaluation is a distinct mapping, and their number is the budget
    assert len(fn.calls) == len(set(fn.calls)) == res.n_evaluations == 40
    assert [h["mapping"] for h in res.history] == [list(c) for c in fn.calls]
    # elitism: the population's best never gets worse from one generation to the next
    best = [g["best_fitness"] for g in res.generations]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))
    assert res.best_fitness == max(h["fitness"] for h in res.history)
    assert res.best == list(TARGET)  # found the optimum of 216 with 40 evaluations


def test_ga_without_elitism_can_lose_the_best():
    """The elitism test above can fail: with elitism=0 and heavy mutation the population best drops."""
    drops = 0
    for seed in range(4):
        res = genetic_search(peaked, 3, 6, GAConfig(population=4, budget=40, elitism=0, mutation_rate=0.9,
                                                    crossover_rate=0.0, seed=seed))
        best = [g["best_fitness"] for g in res.generations]
        drops += any(b2 < b1 for b1, b2 in zip(best, best[1:]))
    assert drops > 0


def test_cache_is_shared_and_counts_only_misses():
    fn = Counting(peaked)
    cache = FitnessCache(fn)
    assert cache([1, 3, 5]) == 0.0 and cache((1, 3, 5)) == 0.0
    assert cache.calls == 1 and len(fn.calls) == 1
    ga = genetic_search(fn, 3, 6, GAConfig(population=5, budget=12, seed=0), cache=cache)
    rnd = random_search(fn, 3, 6, ga.n_evaluations, seed=0, cache=cache)
    assert ga.n_evaluations == rnd.n_evaluations == 12
    overlap = {tuple(h["mapping"]) for h in ga.history} & {tuple(h["mapping"]) for h in rnd.history}
    assert cache.calls == len(fn.calls) == len({tuple(h["mapping"]) for h in ga.history + rnd.history}
                                               | {(1, 3, 5)})
    assert cache.calls <= 1 + 24 - len(overlap)


def test_monotone_and_skip_constraints():
    res = genetic_search(peaked, 3, 6, GAConfig(population=6, budget=25, monotone=True, seed=2))
    assert all(is_monotone(h["mapping"]) for h in res.history)
    res = genetic_search(lambda m: float(m.count(None)), 3, 4, GAConfig(population=6, budget=30, allow_skip=True,
                                                                        seed=3))
    genes = {g for h in res.history for g in h["mapping"]}
    assert genes <= set(range(4)) | {None} and None in genes and res.best == [None, None, None]
    rnd = random_search(peaked, 3, 6, 20, monotone=True, seed=1)
    assert rnd.n_evaluations == 20 and all(is_monotone(h["mapping"]) for h in rnd.history)
    # a budget larger than the space stops at the space
    small = genetic_search(peaked, 2, 2, GAConfig(population=3, budget=50, seed=0))
    assert small.n_evaluations == 4


def test_run_search_report_gives_random_the_same_count():
    report = run_layermap_search(peaked, 3, 6, GAConfig(population=6, budget=20, seed=5), exhaustive=True)
    assert report["ga"]["n_evaluations"] == report["random"]["n_evaluations"] == 20
    assert report["baselines"]["uniform"] == {"mapping": [1, 3, 5], "fitness": 0.0}
    assert report["exhaustive"]["n"] == 216 and report["exhaustive"]["best"]["mapping"] == [1, 3, 5]
    assert report["best"]["fitness"] == 0.0
    json.dumps(report)
    with pytest.raises(CompressionError, match="unknown search method"):
        run_layermap_search(peaked, 3, 6, methods=("ga", "annealing"))
    with pytest.raises(CompressionError, match="elitism"):
        GAConfig(population=4, elitism=4).validate()


# ---------------------------------------------------------------------------------------------- the proxy
TEXTS = ["a good movie with great acting", "the film was boring and slow", "lovely music and a bright story",
         "a terrible plot with dull scenes"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def test_proxy_evaluator_scores_mappings(tok):
    torch.manual_seed(0)
    teacher = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=3, max_seq_len=32))
    s_cfg = ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=2, d_model=32, n_heads=2,
                                  n_kv_heads=2, d_ff=64, max_seq_len=32)
    exs = [Example(t, None, i % 2) for i, t in enumerate(TEXTS[:16])]
    task = ClassificationBatches(exs, exs[:8], tok, 4, 16)
    gd = ToyData(vocab=tok.vocab_size, seq_len=16, batch_size=4)
    ev = ProxyEvaluator(teacher, s_cfg, gd, [task], ProxySetting(gd_steps=2, ft_steps=2, warmup_steps=1))
    a = ev([0, 2])
    assert 0.0 <= a <= 1.0 and ev.runs == 1
    assert ev([0, 2]) == a  # deterministic: same map, same fitness
    neg = ProxyEvaluator(teacher, s_cfg, gd, [task], ProxySetting(gd_steps=2, ft_steps=2, warmup_steps=1,
                                                                  metric="neg_loss"))([0, 2])
    assert neg < 0
    with pytest.raises(CompressionError, match="names teacher layers"):
        ev([0, 3])
    with pytest.raises(CompressionError, match="labelled task"):
        ProxyEvaluator(teacher, s_cfg, gd, [])


def test_cli_search_layermap_end_to_end(tok, tmp_path):
    torch.manual_seed(0)
    teacher = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=3, max_seq_len=32))
    ckpt.save_checkpoint(tmp_path / "t", teacher.state_dict(), teacher.config, tokenizer_json=tok.to_json_str())
    rows = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(TEXTS[:16])]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    (tmp_path / "corpus.txt").write_text("\n\n".join(TEXTS * 3))
    out = tmp_path / "search.json"
    res = CliRunner().invoke(app, [str(a) for a in (
        "search", "layermap", "--teacher", tmp_path / "t", "--student", "teacher", "--n-layers", 2,
        "--corpus", tmp_path / "corpus.txt", "--task-train", tmp_path / "train.tsv", "--task-val", tmp_path / "dev.tsv",
        "--budget", 3, "--population", 2, "--elitism", 1, "--gd-steps", 1, "--ft-steps", 1, "--batch-size", 4,
        "--seq-len", 16, "--out", out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads(out.read_text())
    assert report["ga"]["n_evaluations"] == report["random"]["n_evaluations"] == 3
    assert set(report["baselines"]) == {"uniform", "top", "bottom"}
    assert report["proxy_evaluations"] <= 3 + 3 + 3 and "metadata" in report
    bad = CliRunner().invoke(app, [str(a) for a in (
        "search", "layermap", "--teacher", tmp_path / "missing", "--student", "teacher", "--corpus", "x",
        "--task-train", tmp_path / "train.tsv", "--task-val", tmp_path / "dev.tsv")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
