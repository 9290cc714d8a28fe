"""The benchmarks' shared machinery: the one runner (per-(arm, seed) cache, worker pool, stop handling), the
one mean ± std, and the data folder from ``$MORPHLM_DATA``."""

from __future__ import annotations

import json
import math

import pytest

from morphlm.bench import runner
from morphlm.train.loop import TrainingInterrupted
from morphlm.bench.stats import mean_std


# ------------------------------------------------------------------------------------------ mean_std
def test_mean_std_policy_drops_none_and_non_finite():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert mean_std([1.0, None, float("nan"), float("inf"), -float("inf"), 3]) == mean_std([1.0, 3.0])
    assert mean_std([0.25]) == {"mean": 0.25, "std": 0.0, "n": 1}  # one seed: no spread
    assert mean_std([]) == mean_std([None, float("nan")]) == {"mean": None, "std": None, "n": 0}
    assert isinstance(mean_std([2, 4])["mean"], float)  # ints (e.g. steps) are numbers too
    with pytest.raises(TypeError, match="numbers or None"):
        mean_std([True, 1.0])
    with pytest.raises(TypeError, match="numbers or None"):
        mean_std(["0.5"])


def test_every_benchmark_uses_the_one_policy():
    """growth, compression and fpt aggregate over seeds with the same rule: a NaN seed is not a sample."""
    from morphlm.bench import compression_report, fpt, growth_analysis

    agg = compression_report.aggregate_arm([{"dev_acc": 0.5}, {"dev_acc": float("nan")}, {"dev_acc": 0.7}])
    assert agg["dev_acc"]["mean"] == pytest.approx(0.6) and agg["dev_acc"]["n"] == 2
    assert fpt._ms([0.5, None, float("nan"), 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))

    def rec(losses):
        curve = [{"step": i, "flops": 10.0 * i, "val_loss": v} for i, v in enumerate(losses)]
        return {"curve": curve, "final_val_loss": losses[-1], "train_flops": curve[-1]["flops"]}

    runs = {"scratch": {0: rec([5.0, 4.0]), 1: rec([5.0, 4.0])},
            "arm": {0: rec([5.0, 3.0]), 1: rec([5.0, float("nan")])}}
    m = growth_analysis.analyse(runs)["arm"]
    assert m["final_val_loss"] == pytest.approx(3.0) and m["final_val_loss_std"] == 0.0


# ------------------------------------------------------------------------------------------ result cache
def test_result_cache_runs_once_reuses_and_recomputes_a_broken_file(tmp_path):
    cache = runner.ResultCache(tmp_path / "c")
    calls = []

    def job():
        calls.append(1)
        return {"acc": 0.5, "bad": float("nan")}

    with runner.STOP:
        first = cache.get_or_run("kd-s0", job)
        assert first["acc"] == 0.5 and math.isnan(first["bad"])
        assert cache.get_or_run("kd-s0", job) == {"acc": 0.5, "bad": None}  # strict JSON on disk
        assert len(calls) == 1
        cache.path("kd-s0").write_text("{not json")
        cache.get_or_run("kd-s0", job)
        assert len(calls) == 2 and json.loads(cache.path("kd-s0").read_text())["acc"] == 0.5
        assert cache.load("missing") is None


def test_a_stopped_run_caches_nothing_and_interruptions_become_bench_interrupted(tmp_path):
    cache = runner.ResultCache(tmp_path)
    with runner.STOP:
        with pytest.raises(runner.BenchInterrupted, match="source x; it was interrupted"):
            with runner.interruptible("source x", "it was interrupted"):
                raise TrainingInterrupted(step=3, out_dir=None)
        with runner.interruptible("source x"):  # finished work passes
            pass

        def cut():
            raise TrainingInterrupted(step=1, out_dir=None)

        with pytest.raises(runner.BenchInterrupted, match="kd seed 1.*not cached"):
            cache.get_or_run("kd-s1", cut, "kd seed 1")
        assert not cache.path("kd-s1").exists()
        runner.STOP.requested = True
        with pytest.raises(runner.BenchInterrupted, match="arm seed 3.*not cached"):
            cache.store("arm-s3", {"x": 1}, "arm seed 3")
        with pytest.raises(runner.BenchInterrupted):
            with runner.interruptible("anything"):  # finished, but the run's stop was requested meanwhile
                pass
    assert not cache.path("arm-s3").exists()
    with runner.STOP:  # a new run starts without the old request
        assert not runner.stop_requested()


def _square(job):
    return {"value": job["seed"] ** 2}


def _stop_at_two(job):
    return {"interrupted": True} if job["seed"] == 2 else {"value": job["seed"]}


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_in_process_and_in_a_pool(workers):
    got = {}
    jobs = [{"name": "a", "seed": s} for s in range(4)]
    with runner.STOP:
        runner.run_jobs(jobs, _square, workers=workers, desc="t", progress=False,
                        on_done=lambda j, r: got.__setitem__(j["seed"], r["value"]))
    assert got == {0: 0, 1: 1, 2: 4, 3: 9}


def test_run_jobs_stops_after_an_interrupted_job():
    """A job cut short by a signal ends the run: the jobs after it do not start, it is not handed on."""
    done = []
    jobs = [{"name": "a", "seed": s} for s in range(5)]
    with runner.STOP:
        with pytest.raises(runner.BenchInterrupted, match=r"a seed 2 cut short.*rerun"):
            runner.run_jobs(jobs, _stop_at_two, workers=1, desc="arms", progress=False,
                            on_done=lambda j, r: done.append(j["seed"]))
    assert done == [0, 1]


def test_growth_job_reports_a_stopped_run_as_interrupted(tmp_path, monkeypatch):
    """A growth job whose fit() was cut short reports ``interrupted`` to the runner (never a failure or a
    finished record)."""
    from morphlm.bench import growth_jobs

    def cut(*a, **k):
        raise runner.BenchInterrupted("stopped by a signal during stack seed 0")

    monkeypatch.setattr(growth_jobs, "run_arm", cut)
    payload = {"kind": "arm", "name": "stack", "seed": 0, "cfg": {"corpus": "stdlib"}, "work": str(tmp_path)}
    res = growth_jobs.job(payload)
    assert res["ok"] is False and res["interrupted"] is True


# ------------------------------------------------------------------------------------------ data folder
def test_data_dir_comes_from_morphlm_data(tmp_path, monkeypatch):
    from morphlm.data import paths

    monkeypatch.delenv("MORPHLM_DATA", raising=False)
    default = paths.data_dir()
    assert default == paths.default_data_dir() and default.parts[-2:] == ("shared", "data")
    assert default.parent.parent == paths.Path(paths.__file__).resolve().parents[2].parent  # next to the repo
    monkeypatch.setenv("MORPHLM_DATA", str(tmp_path))
    assert paths.data_dir() == tmp_path
    monkeypatch.setenv("MORPHLM_DATA", "  ")
    assert paths.data_dir() == default  # blank counts as unset


def test_setting_morphlm_data_moves_where_the_benchmarks_look(tmp_path, monkeypatch):
    from morphlm.bench import compression as bc
    from morphlm.bench import fpt
    from morphlm.bench import growth as gb
    from morphlm.compress.errors import CompressionError

    monkeypatch.setenv("MORPHLM_DATA", str(tmp_path))
    assert gb.default_corpus() == "shakespeare"  # no gutenberg/ in this data folder
    (tmp_path / "gutenberg").mkdir()
    assert gb.default_corpus() == str(tmp_path / "gutenberg")
    assert gb.quick_config().corpus == str(tmp_path / "gutenberg")
    assert fpt.resolve_corpus("gutenberg", tmp_path / "unused.tsv") == str(tmp_path / "gutenberg")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "glue-sst2" / "train.tsv")):
        fpt.run(size="tiny", out=tmp_path / "fpt.json", progress=False)
    with pytest.raises(CompressionError, match=rf"{tmp_path}/glue-sst2.*MORPHLM_DATA"):
        bc.run_benchmark(profile=bc.TEST, arms=["scratch"], teacher_kind="own", out=tmp_path / "c.json", cache_dir=tmp_path / "cache",
                         progress=False)


def test_the_shared_data_fixture_follows_morphlm_data(tmp_path, monkeypatch):
    """tests/conftest.py's ``shared_data`` is the data folder; without one the test skips naming MORPHLM_DATA."""
    from tests import conftest

    monkeypatch.setenv("MORPHLM_DATA", str(tmp_path))
    fixture = conftest.shared_data.__wrapped__  # the function behind the fixture
    assert fixture() == tmp_path
    monkeypatch.setenv("MORPHLM_DATA", str(tmp_path / "absent"))
    with pytest.raises(pytest.skip.Exception, match="MORPHLM_DATA"):
        fixture()
