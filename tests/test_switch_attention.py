"""Switch Attention and sliding-window attention (morphlm/model/switch_attention.py): the routed execution against
dense references, both gradient estimators, the regulariser and its dual ascent through fit(), the CLI
(continual pretraining from a full-attention checkpoint, bit-exact resume, generation, bad input) and the FLOPs
ruler's real-context counting."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clihelp import cli
from morphlm.model import ConfigError, ModelConfig, TransformerLM
from morphlm.model import switch_attention as sa
from morphlm.model.generate import generate
from morphlm.train import flops
from morphlm.train.loop import fit
from morphlm.train.optim import TrainArgs
from toydata import ToyData


def cfg(**kw):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    base.update(kw)
    return ModelConfig.from_name(kw.pop("preset", "tiny-llama"), **base)


def model_of(c, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(c).eval()


def randomise_routers(model, seed=1, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in model.switch_routers():
            r.proj.weight.copy_(torch.randn(r.proj.weight.shape, generator=g))
            r.proj.bias.fill_(bias)


def dense_window(q, k, v, w):
    """A plain softmax over the keys [t-w+1, t], one query at a time."""
    T = q.shape[2]
    out = torch.empty_like(q)
    for t in range(T):
        lo = max(0, t - w + 1)
        s = q[:, :, t:t + 1] @ k[:, :, lo:t + 1].transpose(-1, -2) / math.sqrt(q.shape[-1])
        out[:, :, t:t + 1] = s.softmax(-1) @ v[:, :, lo:t + 1]
    return out


# ------------------------------------------------------------------------------------------------ branches
@pytest.mark.parametrize("T,w", [(37, 8), (32, 8), (5, 8), (9, 1)])
def test_banded_window_equals_dense_masked_reference(T, w):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    ref = dense_window(q, k, v, w)
    assert torch.allclose(sa.local_branch(q, k, v, w, None, 0.0), ref, atol=1e-5)
    masked = sa.local_branch(q, k, v, w, torch.ones(2, 1, T, T, dtype=torch.bool).tril(), 0.0)
    assert torch.allclose(masked, ref, atol=1e-5)
    # tokens t < w see their whole prefix: the two branches are one function there
    full = sa.full_branch(q, k, v, None, 0.0)
    n = min(w, T)
    assert torch.allclose(full[:, :, :n], ref[:, :, :n], atol=1e-6)
    if T > w:  # both banded kernels (CPU matmuls at several block sizes; SDPA, used off the CPU)
        for block in (1, 3, 4, 8, 64):
            assert torch.allclose(sa.banded_window(q, k, v, w, 0.0, block=block), ref, atol=1e-5), block
        assert torch.allclose(sa.banded_window_sdpa(q, k, v, w, 0.0), ref, atol=1e-5)
    if T > w:
        assert not torch.allclose(full[:, :, w:], ref[:, :, w:], atol=1e-3)


@pytest.mark.parametrize("estimator", ["two_branch", "one_branch"])
def test_routed_attention_equals_two_branch_reference_for_random_routings(estimator):
    c = cfg(attention="switch", window=8, switch_estimator=estimator)
    router = sa.SwitchRouter(c)
    torch.manual_seed(3)
    B, H, T, Dh = 2, 4, 40, 8
    q, k, v = (torch.randn(B, H, T, Dh, requires_grad=True) for _ in range(3))
    x = torch.randn(B, T, 32)
    for trial in range(3):
        with torch.no_grad():
            router.proj.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(trial))
            router.proj.bias.zero_()
        p = router.probs(x)
        gate = (p > 0.5)[:, None, :, None]
        assert 0.2 < gate.float().mean() < 0.8  # a mixed routing
        full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        local = F.scaled_dot_product_attention(q, k, v, attn_mask=sa.window_mask(T, 8, "cpu"))
        ref = torch.where(gate, full, local)
        with torch.no_grad():  # evaluation: the gathered path
            y = sa.variant_attention(router, "switch", 8, x, q, k, v, None, 0.0)
        assert torch.allclose(y, ref, atol=1e-5)
        y = sa.variant_attention(router, "switch", 8, x, q, k, v, None, 0.0)  # training path of the estimator
        assert torch.allclose(y, ref, atol=1e-5)
        # q/k/v get the chosen branch's gradient under either estimator; the router gets the estimator's
        G = torch.randn_like(y)
        got = torch.autograd.grad((y * G).sum(), (q, k, v, router.proj.bias))
        want = torch.autograd.grad((ref * G).sum(), (q, k, v))
        for a, b in zip(got[:3], want):
            assert torch.allclose(a, b, atol=1e-5)
        pd = p.detach()
        dp = pd * (1 - pd)  # ∂p/∂b
        dot_full, dot_local = (G * full).sum((1, 3)).detach(), (G * local).sum((1, 3)).detach()
        if estimator == "two_branch":  # straight-through: ∂y/∂p = Full − SWA
            expect = ((dot_full - dot_local) * dp).sum()
        else:  # Full/p where full-routed, −SWA/(1−p) where local-routed
            expect = torch.where(pd > 0.5, dot_full / pd, -dot_local / (1 - pd)).mul(dp).sum()
        assert torch.allclose(got[3], expect.reshape(got[3].shape), rtol=1e-4, atol=1e-5)


def test_one_and_two_branch_models_agree_except_in_the_router_gradient():
    models = []
    for est in ("two_branch", "one_branch"):
        m = model_of(cfg(attention="switch", window=8, switch_estimator=est)).train()
        randomise_routers(m)
        models.append(m)
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    outs = [m(ids, labels=ids) for m in models]
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-5)
    for m, o in zip(models, outs):
        o.loss.backward()
    (a, b) = [dict(m.named_parameters()) for m in models]
    # the parameters no router reads from (the last layer's attention, its MLP and the head) get equal gradients;
    # the router's gradient reaches the residual stream below it (the embeddings) differently
    downstream = [n for n in a if n.startswith(("blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp",
                                                "blocks.1.norm2", "final_norm", "lm_head"))]
    assert len(downstream) >= 5
    for name in downstream:
        assert torch.allclose(a[name].grad, b[name].grad, atol=1e-5), name
    assert not torch.allclose(a["tok_emb.weight"].grad, b["tok_emb.weight"].grad, atol=1e-5)
    assert not torch.allclose(a["blocks.1.attn.switch.proj.weight"].grad, b["blocks.1.attn.switch.proj.weight"].grad)


# ------------------------------------------------------------------------------------------------ model level
def test_all_full_routing_equals_full_model_and_all_local_equals_sliding():
    full = model_of(cfg())
    switch = model_of(cfg(attention="switch", window=8), seed=5)
    missing, unexpected = switch.load_state_dict(full.state_dict(), strict=False)
    assert not unexpected and all(".attn.switch." in k for k in missing)
    ids = torch.randint(0, 64, (2, 50), generator=torch.Generator().manual_seed(1))
    ref = full(ids).logits
    assert torch.allclose(switch(ids).logits, ref, atol=1e-5)  # the router starts as full attention
    with torch.no_grad():
        switch.train()
        assert torch.allclose(switch(ids).logits, ref, atol=1e-5)
        switch.eval()
    assert all(r.last_full == 1.0 for r in switch.switch_routers())
    sliding = model_of(cfg(attention="sliding", window=8))
    sliding.load_state_dict(full.state_dict())
    for r in switch.switch_routers():  # every token to the window
        r.proj.bias.data.fill_(-10.0)
    local = switch(ids).logits
    assert torch.allclose(local, sliding(ids).logits, atol=1e-5)
    assert not torch.allclose(local, ref, atol=1e-3)
    # the window matters only beyond it: the first w positions are the full model's
    assert torch.allclose(local[:, :8], ref[:, :8], atol=1e-5)
    # a padding mask takes the dense path: same logits where nothing is padded
    assert torch.allclose(switch(ids, attention_mask=torch.ones_like(ids)).logits, local, atol=1e-5)


def test_regulariser_excludes_tokens_before_the_window():
    m = model_of(cfg(attention="switch", window=8, n_layers=1)).train()
    randomise_routers(m)
    r = m.switch_routers()[0]
    r.lam.fill_(2.0)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(2))
    h = m.tok_emb(ids)
    m(ids, labels=ids)
    p = r.probs(m.blocks[0].norm1(h))
    assert torch.allclose(r.reg_loss, 2.0 * p[:, 8:].mean(), atol=1e-6)
    assert not torch.allclose(r.reg_loss, 2.0 * p.mean(), atol=1e-4)
    assert torch.allclose(m.switch_aux_loss(), r.reg_loss)
    # a sequence no longer than the window has no eligible token: no regulariser, nothing accumulated
    r.rho_sum.zero_(), r.rho_calls.zero_()
    m(ids[:, :8], labels=ids[:, :8])
    assert r.reg_loss is None and float(r.rho_calls) == 0
    m.eval()
    m(ids)
    assert r.reg_loss is None and float(r.rho_calls) == 0  # evaluation forwards do not steer λ


def test_dual_ascent_moves_the_realised_fraction_toward_the_target(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(cfg(attention="switch", window=4, full_fraction=0.25, switch_lambda_lr=2.0,
                              switch_estimator="one_branch"))
    args = TrainArgs(out_dir=str(tmp_path / "run"), max_steps=30, warmup_steps=1, lr=3e-2, progress=False,
                     eval_every=0)
    fit(model, None, ToyData(vocab=64, seq_len=16, batch_size=4), args)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "switch_full" in r]
    assert rows[0]["switch_full"] == 1.0 and rows[0]["switch0_lambda"] == 0.0
    assert rows[-1]["switch0_lambda"] > 0 and rows[-1]["loss_switch"] > 0
    assert rows[-1]["switch_full"] < 0.6, [r["switch_full"] for r in rows]
    assert all(k in rows[-1] for k in ("switch0_full", "switch1_full", "switch0_p", "switch1_lambda"))


def test_generation_with_routed_layers_matches_the_full_model_while_all_full():
    full = model_of(cfg())
    switch = model_of(cfg(attention="switch", window=4))
    switch.load_state_dict(full.state_dict(), strict=False)
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    a = generate(full, prompt, 12, temperature=0)
    assert torch.equal(generate(switch, prompt, 12, temperature=0), a)
    randomise_routers(switch)
    out = generate(switch, prompt, 12, temperature=0)
    assert out.shape == (2, 18) and torch.equal(out[:, :6], prompt)


# ------------------------------------------------------------------------------------------------ config
def test_config_validation_and_full_attention_config_json_unchanged():
    plain = cfg()
    assert not {"attention", "window", "full_fraction", "switch_estimator", "switch_lambda_lr"} & set(plain.to_dict())
    s = cfg(attention="switch", window=8, full_fraction=0.1)
    assert ModelConfig.from_dict(json.loads(s.to_json())) == s
    assert s.replace(attention="full").attention == "full"
    for kw, words in [(dict(attention="switch", window=64), "window=64 must be"),
                      (dict(attention="switch"), "needs a window"),
                      (dict(attention="switch", window=8, full_fraction=1.0), "full_fraction=1.0"),
                      (dict(attention="switch", window=8, full_fraction=0.0), "full_fraction=0.0"),
                      (dict(attention="sliding", window=8, full_fraction=0.5), "full_fraction=0.5"),
                      (dict(window=8), "attention='full'"),
                      (dict(attention="switch", window=8, switch_estimator="x"), "switch_estimator"),
                      (dict(attention="ring"), "attention='ring'")]:
        with pytest.raises(ConfigError, match=words):
            cfg(**kw)
    with pytest.raises(ConfigError, match="bidirectional"):
        ModelConfig.from_name("tiny-bert", attention="switch", window=8)


# ------------------------------------------------------------------------------------------------ FLOPs
def test_flops_count_each_tokens_real_context():
    c = ModelConfig.from_name("tiny", attention="switch", window=4, full_fraction=0.25)  # d 64, 2 layers
    full, sliding = c.replace(attention="full"), ModelConfig.from_name("tiny", attention="sliding", window=4)
    T = 16
    # Σ_t ctx_t over t = 1..16: full 136; local 1+2+3+4 + 12·4 = 58; switch at ρ = 0.25: 10 + 0.25·126 + 0.75·48
    assert flops.attention_flops_per_token(full, T) == 4 * 64 * 2 * 136 / 16
    assert flops.attention_flops_per_token(sliding, T) == 4 * 64 * 2 * 58 / 16
    assert flops.attention_flops_per_token(c, T) == 4 * 64 * 2 * 77.5 / 16
    assert flops.attention_flops_per_token(c, T, [1.0, 0.0]) == 4 * 64 * (136 + 58) / 16  # measured per layer
    assert flops.attention_flops_per_token(c, T, 1.0) == flops.attention_flops_per_token(full, T)
    n = flops.matmul_params(full, T)
    assert flops.forward_flops_per_token(full, T) == 2 * n + 4 * 2 * 64 * 16  # unchanged convention
    assert flops.forward_flops_per_token(c, T) == 2 * n + 4 * 2 * 64 * 16 * 77.5 / 136 + 2 * 2 * 64
    assert flops.forward_flops_per_token(sliding, T) == 2 * n + 4 * 2 * 64 * 16 * 58 / 136
    with pytest.raises(ValueError, match="one per layer"):
        flops.attention_flops_per_token(c, T, [0.5])
    assert "Switch Attention (window 4, target full fraction 0.25" in flops.describe(c, 1000, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the router stays in fp32 under autocast
        router = sa.SwitchRouter(c)
        assert router.probs(torch.randn(2, 5, 64)).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ CLI
BASE = ["--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "100000", "--seq-len", "32", "--batch-size", "2",
        "--d-model", "32", "--n-layers", "2", "--warmup-steps", "1", "--eval-every", "0"]


def losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_cli_init_from_full_resume_bit_exact_generate_and_bad_input(tmp_path):
    src, a, b = tmp_path / "full", tmp_path / "a", tmp_path / "b"
    cli("train", *BASE, "--max-steps", 2, "--out", src)
    switch = ["--init", src, "--attention", "switch", "--window", 8, "--full-fraction", 0.25,
              "--switch-lambda-lr", 0.5]
    # continual pretraining from the full checkpoint starts as that model (equal logits)
    from morphlm.train import checkpoint as ckpt
    from morphlm.train.run import _load_init

    state, full_cfg = ckpt.load_state_dict(src)
    full = TransformerLM(full_cfg).eval()
    full.load_state_dict(state)
    converted = TransformerLM(full_cfg.replace(attention="switch", window=8)).eval()
    _load_init(converted, str(src))
    ids = torch.randint(0, full_cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(converted(ids).logits, full(ids).logits, atol=1e-5)

    cli("train", *BASE, *switch, "--max-steps", 3, "--schedule-steps", 6, "--out", a)
    saved = json.loads((a / "config.json").read_text())
    assert (saved["attention"], saved["window"], saved["full_fraction"]) == ("switch", 8, 0.25)
    cli("train", *BASE, *switch, "--max-steps", 6, "--out", a, "--resume", "auto")
    cli("train", *BASE, *switch, "--max-steps", 6, "--out", b)
    assert losses(a) == losses(b) and len(losses(a)) == 6
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["switch0_full"] == 1.0 and "switch1_full" in rows[-1] and rows[-1]["switch0_lambda"] > 0
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert wa["blocks.0.attn.switch.lam"] > 0
    res = cli("generate", a, "--prompt", "def foo(x):\n    return", "--max-new-tokens", 5, "--temperature", 0)
    assert "def foo" in res.stdout
    # bad input: a clear error naming the setting, nothing written
    for flags, words in [(["--attention", "switch", "--window", 128], "window=128"),
                         (["--attention", "switch", "--window", 8, "--full-fraction", 1.5], "full_fraction=1.5"),
                         (["--preset", "tiny-bert", "--attention", "switch", "--window", 8], "bidirectional")]:
        bad = tmp_path / "bad"
        res = cli("train", *BASE, *flags, "--max-steps", 1, "--out", bad, code=None)
        assert res.exit_code != 0 and words in res.output, res.output
        assert not bad.exists()


# ------------------------------------------------------------------------------------------------ FlexAttention
def _routed_reference(q, k, v, gate, w):
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    local = F.scaled_dot_product_attention(q, k, v, attn_mask=sa.window_mask(q.shape[2], w, q.device))
    return torch.where(gate[:, None, :, None], full, local)


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager flex_attention warns that it is unfused
def test_flex_routed_permutation_and_mask_mod_on_cpu_forward():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 48, 16) for _ in range(3))
    gate = torch.rand(2, 48) < 0.3
    with torch.no_grad():
        y = sa.flex_routed(q, k, v, gate, 8, kernel=flex_attention)
    assert torch.allclose(y, _routed_reference(q, k, v, gate, 8), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flex_routed_on_cuda_matches_the_sdpa_path_forward_and_backward():
    torch.manual_seed(0)
    B, H, T, Dh, w = 2, 4, 1024, 64, 128
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        q, k, v = (torch.randn(B, H, T, Dh, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        gate = torch.rand(B, T, device="cuda") < 0.25
        G = torch.randn(B, H, T, Dh, device="cuda", dtype=dtype)
        y = sa.flex_routed(q, k, v, gate, w)
        ref = _routed_reference(q, k, v, gate, w)
        scale = ref.abs().max().item()
        assert (y - ref).abs().max().item() <= tol * max(scale, 1.0)
        got = torch.autograd.grad((y.float() * G).sum(), (q, k, v))
        want = torch.autograd.grad((ref.float() * G).sum(), (q, k, v))
        for a, b in zip(got, want):
            assert (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1.0)
    # the model trains through it with the one-branch estimator
    c = cfg(attention="switch", window=8, switch_estimator="one_branch")
    m = TransformerLM(c).cuda().train()
    randomise_routers(m)
    ids = torch.randint(0, 64, (2, 40), device="cuda")
    out = m(ids, labels=ids)
    out.loss.backward()
    with torch.no_grad():
        ref_logits = m.eval()(ids).logits  # evaluation: the SDPA gathered path
    assert torch.allclose(out.logits, ref_logits, atol=1e-4)
    assert m.blocks[0].attn.switch.proj.weight.grad.abs().sum() > 0


def test_hugging_face_export_refuses_routed_and_sliding_attention():
    from morphlm.interop.hf import InteropError, config_to_hf

    for kw in (dict(attention="switch", window=8), dict(attention="sliding", window=8)):
        with pytest.raises(InteropError, match=f"attention='{kw['attention']}'"):
            config_to_hf(cfg(**kw))
