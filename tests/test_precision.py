"""fit()'s precision: "auto" is bf16 autocast on CUDA and on CPUs with native bf16 matmuls (AVX-512 BF16 or AMX),
fp32 elsewhere; MORPHLM_CPU_BF16 overrides the detection; the precision used is in every metrics record and in
FitResult."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import steps
from morphlm.train.loop import fit
from morphlm.train.optim import TrainArgs

from toydata import ToyData


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set MORPHLM_CPU_BF16 for one test (the detection is cached: cleared before and after)."""
    def set_(value: str) -> None:
        monkeypatch.setenv("MORPHLM_CPU_BF16", value)
        steps.cpu_bf16_supported.cache_clear()

    yield set_
    steps.cpu_bf16_supported.cache_clear()


def test_resolve_precision(cpu_bf16):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for dev in (cpu, cuda):
        assert steps.resolve_precision(dev, "fp32") == "fp32" and steps.resolve_precision(dev, "bf16") == "bf16"
    assert steps.resolve_precision(cuda, "auto") == "bf16"
    cpu_bf16("1")
    assert steps.resolve_precision(cpu, "auto") == "bf16"
    cpu_bf16("0")
    assert steps.resolve_precision(cpu, "auto") == "fp32"
    assert steps.resolve_precision(torch.device("meta"), "auto") == "fp32"
    with pytest.raises(ValueError, match="precision='fp16'"):
        steps.resolve_precision(cpu, "fp16")


def test_detection_follows_the_cpu_flags(cpu_bf16, monkeypatch):
    cpu_bf16("")  # no override: torch's own CPU feature checks decide
    flags = {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}
    for name in flags:
        monkeypatch.setattr(torch.cpu, name, lambda n=name: flags[n], raising=False)
    assert steps.cpu_bf16_supported() is False
    steps.cpu_bf16_supported.cache_clear()
    flags["_is_amx_tile_supported"] = True
    assert steps.cpu_bf16_supported() is True


def _run(tmp_path, name, precision):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny"))
    args = TrainArgs(out_dir=str(tmp_path / name), max_steps=3, warmup_steps=1, lr=3e-3, progress=False,
                     device="cpu", precision=precision)
    res = fit(model, None, ToyData(), args)
    recs = [json.loads(line) for line in (Path(args.out_dir) / "metrics.jsonl").read_text().splitlines()]
    return res, recs


def test_fit_auto_uses_bf16_on_a_bf16_cpu_and_records_it(tmp_path, cpu_bf16):
    cpu_bf16("1")
    auto, auto_recs = _run(tmp_path, "auto", "auto")
    bf16, _ = _run(tmp_path, "bf16", "bf16")
    assert auto.precision == "bf16" and {r["precision"] for r in auto_recs} == {"bf16"}
    assert auto.final_loss == bf16.final_loss  # auto IS bf16 autocast here, bit for bit
    cpu_bf16("0")
    off, off_recs = _run(tmp_path, "off", "auto")
    fp32, _ = _run(tmp_path, "fp32", "fp32")
    assert off.precision == "fp32" and {r["precision"] for r in off_recs} == {"fp32"}
    assert off.final_loss == fp32.final_loss and off.final_loss != auto.final_loss
