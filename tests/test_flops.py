import pytest
from torch import nn

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import flops


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-bert", "gpt2-small"])
def test_matmul_params_equal_the_models_linear_weights(preset):
    cfg = ModelConfig.from_name(preset)
    model = TransformerLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if model.lm_head is None:  # tied output embedding is a matmul too
        linear += model.tok_emb.weight.numel()
    assert flops.matmul_params(cfg) == linear


def test_training_flops_formula():
    cfg = ModelConfig.from_name("gpt2-small")
    T = 1024
    n = flops.matmul_params(cfg, T)
    assert flops.training_flops_per_token(cfg, T) == 6 * n + 12 * cfg.n_layers * cfg.d_model * T
    # GPT-2 small: about 124M matmul weights with the 50304-token head
    assert 120e6 < n < 130e6
    assert flops.training_flops(cfg, 1000, T) == 1000 * flops.training_flops_per_token(cfg, T)


def test_mfu():
    assert flops.mfu(494.5e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert flops.mfu(1e12, None) is None
