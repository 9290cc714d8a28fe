"""CUDA checks: bf16 autocast numerics, fit() on the GPU, torch.compile parity, MFU logging.

Skipped without a CUDA device (``pytest -m gpu`` selects them; ``benchmarks/gpu_check.sh`` runs them on
the GPU machine). Sizes are the tiny presets so the whole file takes well under a minute on an H100,
most of it spent in the one ``torch.compile``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train import flops
from morphlm.train.loop import TrainArgs, evaluate, fit, model_loss
from toydata import ToyData

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# bf16 keeps 8 significant bits: every rounding is off by up to 2^-9 ~ 0.2% relative. A tiny model's
# logits pass through ~10 bf16-rounded matmul inputs/outputs over two residual layers, and those errors
# add up to a fraction of a percent of the logits' scale (0.3-0.5% of max |logit| for the three presets
# with bf16 autocast on CPU). 5% of the largest |logit| leaves 10x room for kernel differences, while a
# real bug (a wrong or missing mask, rotary positions off by one, a dropped norm) moves logits by a
# sizeable fraction of their scale.
BF16_REL_TOL = 5e-2


def _inputs(cfg: ModelConfig, batch: int = 3, seq: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)}
    if cfg.n_segments:
        out["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous()
    if not cfg.causal:  # the encoder also takes the padded (masked SDPA) path
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq - 5:] = 0
        out["attention_mask"] = mask
    return out


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-bert"])
def test_bf16_autocast_forward_matches_fp32_cpu(preset):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name(preset)).eval()
    batch = _inputs(model.config)
    with torch.no_grad():
        ref = model(**batch).logits  # fp32 on CPU
        model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(**{k: v.cuda() for k, v in batch.items()}).logits
    assert got.dtype == torch.bfloat16  # autocast really ran the head in bf16
    got = got.float().cpu()
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err < BF16_REL_TOL * scale, f"{preset}: max |bf16 - fp32| = {err:.3g} vs logit scale {scale:.3g}"


def test_fit_on_cuda_bf16_trains_logs_mfu_and_checkpoint_loads_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny"))
    run = tmp_path / "run"
    args = TrainArgs(out_dir=str(run), max_steps=20, warmup_steps=2, lr=3e-3, device="cuda", precision="auto",
                     progress=False)
    res = fit(model, None, ToyData(), args)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0, [r["loss"] for r in rows]
    assert res.val_loss is not None and math.isfinite(res.val_loss)

    name = torch.cuda.get_device_name(0)
    if flops.peak_flops(name) is None:
        pytest.skip(f"{name} has no peak in morphlm.train.flops.PEAK_BF16_FLOPS: no MFU to check")
    assert all("mfu" in r for r in rows)
    assert all(0.0 < r["mfu"] < 1.0 for r in rows)

    loaded = ckpt.load_model(run, device="cpu")
    assert next(loaded.parameters()).device.type == "cpu"
    trained = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, trained[key]), key
    cpu_val = evaluate(loaded, model_loss, ToyData().val_batches(), torch.device("cpu"), "fp32")
    assert abs(cpu_val["val_loss"] - res.val_loss) < 0.1  # fp32 on CPU vs bf16 on the GPU, same batches


def test_compiled_model_matches_eager_in_bf16():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny-llama")).cuda().train()
    batch = {k: v.cuda() for k, v in ToyData(vocab=model.config.vocab_size).train_batch(0).items()}

    def loss_and_grads(runner):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = runner(**batch).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])

    eager_loss, eager_grad = loss_and_grads(model)
    compiled_loss, compiled_grad = loss_and_grads(torch.compile(model))
    assert abs(compiled_loss - eager_loss) < 1e-2
    assert torch.isfinite(compiled_grad).all()
    cos = torch.nn.functional.cosine_similarity(compiled_grad, eager_grad, dim=0).item()
    assert cos > 0.99, cos
