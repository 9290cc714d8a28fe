"""KV-cached generation: the same tokens as rerunning the whole prefix, its context limits, its fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM, generate
from morphlm.model.attention import KVCache, KVCacheFullError
from morphlm.model.generate import GenerationError, measure_kv_speedup
from morphlm.model.transformer import kv_cache_unsupported

CONFIGS = {
    "gpt-learned-positions": ("tiny", {}),
    "llama-gqa-rope": ("tiny-llama", {}),
    "llama-mqa": ("tiny-llama", dict(n_kv_heads=1)),
    "moe-dropless": ("tiny-llama", dict(moe_experts=4, moe_top_k=2)),
    "qk-norm-sandwich": ("tiny-llama", dict(qk_norm="head", norm_placement="sandwich")),
    "post-norm": ("tiny", dict(norm_placement="post")),
    "sliding-window": ("tiny-llama", dict(attention="sliding", window=6)),
    "switch-routed": ("tiny-llama", dict(attention="switch", window=6)),
}


def _model(name: str, **over) -> TransformerLM:
    preset, base = CONFIGS[name]
    torch.manual_seed(0)
    # a large init spreads the logits, so greedy decoding takes varied tokens rather than repeating one
    model = TransformerLM(ModelConfig.from_name(preset, **base, **over).derive(init_std=0.2)).eval()
    for router in model.switch_routers():  # random routers: some tokens full, some local
        torch.nn.init.normal_(router.proj.weight, std=1.0)
        torch.nn.init.zeros_(router.proj.bias)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_uncached(name):
    model = _model(name)
    x = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    slow = generate(model, x, 40, temperature=0, use_cache=False)
    fast = generate(model, x, 40, temperature=0)
    assert fast.shape == (2, 49)
    assert torch.equal(fast, slow)
    assert len(set(fast[0, 9:].tolist())) > 3  # a real sequence, not one token over and over
    if model.config.attention != "full":  # the window matters: full attention would give other tokens
        assert not torch.equal(fast, generate(_model("llama-gqa-rope"), x, 40, temperature=0))
    for router in model.switch_routers():
        p = router.probs(torch.randn(1, 64, 64))
        assert 0.2 < float((p > 0.5).float().mean()) < 0.8  # both branches are taken


def test_cached_sampling_equals_uncached_and_logits_match():
    model = _model("llama-gqa-rope")
    x = torch.randint(0, 512, (3, 5), generator=torch.Generator().manual_seed(2))
    a = generate(model, x, 25, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(3), use_cache=False)
    b = generate(model, x, 25, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # token by token through the cache == the whole sequence at once, at every position
    seq = b[:1]
    cache = KVCache(model.config.n_layers, seq.shape[1])
    with torch.no_grad():
        full = model(seq).logits
        parts = [model(seq[:, :4], kv_cache=cache).logits]
        parts += [model(seq[:, t:t + 1], kv_cache=cache).logits for t in range(4, 10)]
        parts.append(model(seq[:, 10:], kv_cache=cache).logits)  # a multi-token chunk after cached ones
    assert cache.length == seq.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_cache_overflow_is_a_named_error():
    model = _model("llama-gqa-rope")
    cache = KVCache(model.config.n_layers, 6)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
        with pytest.raises(KVCacheFullError, match="holds 6 positions and 4 are used"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    assert cache.length == 4  # nothing was written by the refused step
    too_long = KVCache(model.config.n_layers, model.config.max_seq_len + 8)
    with torch.no_grad(), pytest.raises(KVCacheFullError, match="run past the model's context"):
        model(torch.zeros(1, 4, dtype=torch.long), kv_cache=too_long)
        model(torch.zeros(1, model.config.max_seq_len, dtype=torch.long), kv_cache=too_long)


def test_request_past_the_context_is_a_named_error():
    model = _model("llama-gqa-rope")  # max_seq_len 128
    with pytest.raises(GenerationError, match="max_new_tokens=128 does not fit the KV cache.*at most 127"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 128, temperature=0)
    # the uncached path keeps the old sliding window over the last max_seq_len tokens
    assert generate(model, torch.zeros(1, 3, dtype=torch.long), 130, temperature=0, use_cache=False).shape[1] == 133


def test_long_prompt_is_truncated_with_a_message(caplog):
    model = _model("llama-gqa-rope")
    x = torch.randint(0, 512, (1, 140), generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.WARNING, logger="morphlm.model.generate"):
        out = generate(model, x, 8, temperature=0)
    assert "prompt of 140 tokens does not fit the model's context of 128 tokens" in caplog.text
    assert "last 120 tokens" in caplog.text
    assert out.shape == (1, 148) and torch.equal(out[:, :140], x)
    # the new tokens are the ones the last 120 prompt tokens give
    tail = generate(model, x[:, -120:], 8, temperature=0, use_cache=False)
    assert torch.equal(out[:, 140:], tail[:, 120:])


def test_uncacheable_models_fall_back_with_a_log_line(caplog):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-llama", moe_experts=4, moe_capacity_factor=1.0)
    model = TransformerLM(cfg).eval()
    assert "expert capacity" in kv_cache_unsupported(cfg)
    x = torch.randint(0, 512, (1, 5))
    with caplog.at_level(logging.INFO, logger="morphlm.model.generate"):
        out = generate(model, x, 6, temperature=0)
    assert "generating without a KV cache: expert capacity" in caplog.text
    assert torch.equal(out, generate(model, x, 6, temperature=0, use_cache=False))
    with pytest.raises(ValueError, match="cannot decode with a KV cache"):
        model(x, kv_cache=KVCache(cfg.n_layers, 16))
    assert "runs each block several times" in kv_cache_unsupported(ModelConfig.from_name("tiny-llama", loop_repeats=2))
    assert kv_cache_unsupported(ModelConfig.from_name("tiny-llama", attention="switch", window=8)) is None


def test_measure_kv_speedup_reports_rates():
    model = _model("gpt-learned-positions")
    res = measure_kv_speedup(model, torch.zeros(1, 4, dtype=torch.long), 12)
    assert res["same_tokens"] is True
    assert res["cached_tok_s"] > 0 and res["uncached_tok_s"] > 0
    assert res["kv_cache_speedup"] == pytest.approx(res["cached_tok_s"] / res["uncached_tok_s"])


def test_growth_masks_decode_the_same_with_the_cache():
    model = _model("llama-gqa-rope")
    masks = model.add_growth_masks(10)
    new_residual = torch.zeros_like(masks.residual, dtype=torch.bool)
    new_residual[-8:] = True
    new_heads = torch.zeros_like(masks.heads, dtype=torch.bool)
    new_heads[:, -16:] = True
    new_neurons = torch.zeros_like(masks.neurons, dtype=torch.bool)
    new_neurons[:, -16:] = True
    masks.set_flags(residual=new_residual, heads=new_heads, neurons=new_neurons)
    for _ in range(4):  # the ramp part-way: the masks scale the new units by 0.4
        model.on_train_step_begin()
    x = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(5))
    assert torch.equal(generate(model, x, 30, temperature=0), generate(model, x, 30, temperature=0, use_cache=False))
