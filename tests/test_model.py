import math

import pytest
import torch

from morphlm.model import ConfigError, ModelConfig, TransformerLM, generate
from morphlm.model.config import DSSN_C_ATTN, DSSN_C_MLP, PRESETS


def test_config_errors_name_problem_and_fix():
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(d_model=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="activation"):
        ModelConfig(activation="tanh")
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.from_name("gpt-17")
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"d_modle": 3})
    with pytest.raises(ConfigError, match="causal=True"):
        ModelConfig(head="lm", causal=False)


def test_config_roundtrip_json(tmp_path):
    cfg = ModelConfig.from_name("tiny-llama", n_layers=3)
    (tmp_path / "config.json").write_text(cfg.to_json())
    back = ModelConfig.from_file(tmp_path)
    assert back == cfg and back.n_kv_heads == 2 and back.head_dim == 16


def test_newer_config_format_is_refused(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"format_version": 99, "d_model": 64}')
    with pytest.raises(ConfigError, match="newer"):
        ModelConfig.from_file(p)


@pytest.mark.parametrize("preset", [p for p in PRESETS if PRESETS[p]["d_model"] <= 256])
def test_presets_forward_and_contract(preset):
    cfg = ModelConfig.from_name(preset)
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    labels = torch.tensor([0, 1]) if cfg.head == "cls" else x
    out = model(x, labels=labels, output_hidden_states=True, output_attentions=True)
    fast = model(x, labels=labels)
    assert torch.allclose(out.logits, fast.logits, atol=1e-5)  # explicit path == SDPA path
    assert len(out.hidden_states) == cfg.n_layers + 1
    assert len(out.attentions) == cfg.n_layers
    assert out.attentions[0].shape == (2, cfg.n_heads, 12, 12)
    assert out.hidden_states[0].shape == (2, 12, cfg.d_model)
    assert torch.isfinite(out.loss)
    if cfg.head != "cls":
        # an untrained model predicts roughly uniformly
        assert abs(out.loss.item() - math.log(cfg.vocab_size)) < 1.0


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich", "dssn"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_causality(placement, position):
    cfg = ModelConfig.from_name("tiny", norm_placement=placement, position=position, n_kv_heads=2,
                                activation="swiglu", norm="rmsnorm")
    model = TransformerLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % cfg.vocab_size
    a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


def test_padding_mask_bidirectional():
    cfg = ModelConfig.from_name("tiny-bert")
    model = TransformerLM(cfg).eval()
    x = torch.randint(7, cfg.vocab_size, (1, 10))
    padded = torch.cat([x, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1)
    ref = model(x).logits
    got = model(padded, attention_mask=mask).logits[:, :10]
    assert torch.allclose(ref, got, atol=1e-5)
    got_scores = model(padded, attention_mask=mask, output_attentions=True).logits[:, :10]
    assert torch.allclose(ref, got_scores, atol=1e-5)


def test_dssn_init():
    cfg = ModelConfig.from_name("tiny", norm_placement="dssn", n_layers=4)
    model = TransformerLM(cfg)
    blk = model.blocks[0]
    assert torch.allclose(blk.norm1_out.weight, torch.full_like(blk.norm1_out.weight, DSSN_C_ATTN / 2))
    assert torch.allclose(blk.norm2_out.weight, torch.full_like(blk.norm2_out.weight, DSSN_C_MLP / 2))
    std = blk.attn.qkv.weight.std().item()
    assert abs(std - math.sqrt(1 / (2 * 64 * 4))) < 0.01
    assert abs(model.tok_emb.weight.std().item() - 0.5) < 0.05


def test_gqa_matches_expanded_heads():
    """GQA with n_kv_heads=2 equals full MHA whose k/v heads are the GQA heads repeated."""
    g = ModelConfig.from_name("tiny", n_kv_heads=2, position="rope")
    m = ModelConfig.from_name("tiny", n_kv_heads=4, position="rope")
    mg, mm = TransformerLM(g).eval(), TransformerLM(m).eval()
    sd = mg.state_dict()
    full = mm.state_dict()
    for k in full:
        if k.endswith("attn.qkv.weight"):
            q, kk, v = sd[k].split((64, 32, 32))
            rep = lambda t: t.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
            full[k] = torch.cat([q, rep(kk), rep(v)])
        elif k.endswith("attn.qkv.bias"):
            q, kk, v = sd[k].split((64, 32, 32))
            rep = lambda t: t.view(2, 16).repeat_interleave(2, dim=0).reshape(64)
            full[k] = torch.cat([q, rep(kk), rep(v)])
        else:
            full[k] = sd[k]
    mm.load_state_dict(full)
    x = torch.randint(0, 512, (2, 9))
    assert torch.allclose(mg(x).logits, mm(x).logits, atol=1e-5)


def test_generate_greedy_is_deterministic():
    cfg = ModelConfig.from_name("tiny")
    model = TransformerLM(cfg)
    x = torch.tensor([[1, 2, 3]])
    a = generate(model, x, 5, temperature=0)
    b = generate(model, x, 5, temperature=0)
    assert a.shape == (1, 8) and torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(generate(model, x, 5, generator=g1), generate(model, x, 5, generator=g2))
    with pytest.raises(ValueError, match="causal LM"):
        generate(TransformerLM(ModelConfig.from_name("tiny-bert")), x, 2)


def test_too_long_input_is_refused():
    model = TransformerLM(ModelConfig.from_name("tiny", max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
