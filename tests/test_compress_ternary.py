"""TernaryBERT: TWN/LAT ternarization on hand-computed tensors, clipped STE, 8-bit activations, exact 2-bit
packing, packed inference == fake-quant inference, the packed checkpoint directory (save/load/eval, real
bytes, corruption), the int8 dynamic baseline, and `morphlm quantize` → `morphlm eval` end to end."""

import json
import math

import pytest
import torch

from morphlm.compress import CompressionError
from morphlm.compress.packed import (PackedTernaryLinear, artifact_bytes, dir_bytes, invalid_codes, load_packed,
                                     pack_ternary, save_packed, size_report, unpack_ternary)
from morphlm.compress.quantize import int8_backend, int8_dynamic, quantize_checkpoint
from morphlm.compress.ternary import (LATSecondMoment, TernaryConfig, TernaryEmbedding, TernaryLinear,
                                      activation_qparams, lat_ternarize, quantize_activation, ternarize,
                                      ternary_modules, twn_ternarize)
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.checkpoint import CheckpointError, load_model, save_checkpoint
from morphlm.train import checkpoint as ckpt
from morphlm.train.loop import TrainArgs, fit
from toydata import ToyData

from clihelp import cli


def tiny(preset="tiny-bert", **kw):
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_name(preset, **kw)).eval()


IDS = torch.randint(5, 512, (3, 24), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------- ternarization by hand
def test_twn_layerwise_threshold_and_scale_by_hand():
    w = torch.tensor([[0.1, -0.5, 0.9], [-0.05, 0.3, 0.0]])
    # mean|w| = 1.85/6; Δ = 0.7·that = 0.21583; kept: -0.5, 0.9, 0.3 → α = 1.7/3
    codes, alpha = twn_ternarize(w)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[0, -1, 1], [0, 1, 0]]
    assert alpha.shape == (1,) and alpha.item() == pytest.approx(1.7 / 3, abs=1e-6)


def test_twn_rowwise_by_hand_and_all_zero_row():
    w = torch.tensor([[1.0, -0.2, 0.4, 0.0], [-0.3, 0.3, 0.1, -0.1], [0.0, 0.0, 0.0, 0.0]])
    # row 0: Δ = 0.7·0.4 = 0.28 → keep 1.0, 0.4 → α 0.7; row 1: Δ = 0.14 → keep ±0.3 → α 0.3; row 2: nothing
    codes, alpha = twn_ternarize(w, rowwise=True)
    assert codes.tolist() == [[1, 0, 1, 0], [-1, 1, 0, 0], [0, 0, 0, 0]]
    assert alpha.shape == (3, 1)
    assert alpha.flatten().tolist() == pytest.approx([0.7, 0.3, 0.0], abs=1e-6)


def test_lat_by_hand_differs_from_twn_when_the_diagonal_is_uneven():
    w = torch.tensor([1.0, 0.45, 0.2, 0.1])
    # TWN: Δ = 0.7·0.4375 = 0.30625 → b = [1, 1, 0, 0], α = 0.725
    codes, alpha = twn_ternarize(w)
    assert codes.tolist() == [1, 1, 0, 0] and alpha.item() == pytest.approx(0.725)
    # LAT, d = [9, 1, 1, 1]: α = (9·1 + 1·0.45)/10 = 0.945 → b = 1[|w| > 0.4725] = [1, 0, 0, 0]
    #   → α = 9·1/9 = 1.0 → b unchanged (threshold 0.5): stop
    d = torch.tensor([9.0, 1.0, 1.0, 1.0])
    codes, alpha = lat_ternarize(w, d)
    assert codes.tolist() == [1, 0, 0, 0] and alpha.item() == pytest.approx(1.0)
    # the result beats every other "top-k by magnitude" ternary fit in the d-weighted error
    err = lambda c, a: float((d * (a * c.float() - w) ** 2).sum())  # noqa: E731
    best = min(err(torch.tensor([1.0] * k + [0.0] * (4 - k)), float((d[:k] * w[:k]).sum() / d[:k].sum()))
               for k in range(1, 5))
    assert err(codes, alpha.item()) == pytest.approx(best)
    # with d = 1, LAT is the plain least-squares fit: α = (1 + 0.45)/2 = 0.725, threshold 0.3625 keeps b
    codes1, alpha1 = lat_ternarize(w)
    assert codes1.tolist() == [1, 1, 0, 0] and alpha1.item() == pytest.approx(0.725)
    with pytest.raises(CompressionError, match="positive"):
        lat_ternarize(w, torch.zeros(4))


def test_rowwise_embedding_uses_one_scale_per_row():
    emb = torch.nn.Embedding(6, 8)
    te = TernaryEmbedding.from_embedding(emb, TernaryConfig())
    codes, alpha = twn_ternarize(emb.weight, rowwise=True)
    ids = torch.tensor([[0, 5, 2]])
    out = te(ids)
    for j, i in enumerate(ids[0].tolist()):
        assert torch.allclose(out[0, j], alpha[i] * codes[i].float())
    assert len(set(alpha.flatten().tolist())) == 6  # six different row scales
    # the state dict keeps the float model's name and the latent (full-precision) table
    assert torch.equal(te.state_dict()["weight"], emb.weight.detach())
    layer = TernaryEmbedding.from_embedding(emb, TernaryConfig(embedding="layer"), "layer")
    assert layer.ternary()[1].shape == (1,)


def test_clipped_ste_gradients():
    lin = torch.nn.Linear(2, 2)
    tl = TernaryLinear.from_linear(lin, TernaryConfig(act_bits=None))
    with torch.no_grad():
        tl.latent_weight.copy_(torch.tensor([[0.5, 3.0], [-2.6, 1.0]]))
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (tl.weight * g).sum().backward()
    # straight through where |w| < 2.5, zero where clipped
    assert tl.latent_weight.grad.tolist() == [[1.0, 0.0], [0.0, 4.0]]
    x = torch.tensor([-3.0, -1.0, 0.5, 2.4, 2.6], requires_grad=True)
    quantize_activation(x, 8, 2.5).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_activation_quantization_round_trip_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 33, generator=g)
    x[0, 0] = 5.0  # beyond the clip
    q, s = activation_qparams(x, 8, 2.5)
    assert q.abs().max() <= 127 and torch.equal(q, q.round())
    assert s.item() == pytest.approx(127 / 2.5)  # max|clamp(x)| = 2.5
    xq = quantize_activation(x, 8, 2.5)
    inside = x.abs() <= 2.5
    assert (xq - x)[inside].abs().max() <= 0.5 / s + 1e-7  # half a step
    assert xq[0, 0].item() == pytest.approx(2.5)  # clipped value maps to the clip
    assert len(torch.unique(xq)) <= 255
    small = torch.tensor([0.01, -0.02, 0.0])  # max|x| sets the scale: the largest entry is exact
    assert quantize_activation(small, 8, 2.5)[1].item() == pytest.approx(-0.02)
    assert torch.equal(quantize_activation(torch.zeros(3), 8, 2.5), torch.zeros(3))
    q4, s4 = activation_qparams(x, 4, None)
    assert q4.abs().max() <= 7 and s4.item() == pytest.approx(7 / 5.0)


# ---------------------------------------------------------------------------- packing
def test_pack_layout_by_hand():
    # codes +1, -1, 0, +1 → 2-bit fields 01, 10, 00, 01 from the low bits: 1 + 2·4 + 0·16 + 1·64 = 73
    packed = pack_ternary(torch.tensor([[1, -1, 0, 1, -1]]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [[73, 2]]  # second byte: -1 then padding
    assert unpack_ternary(packed, 5).tolist() == [[1, -1, 0, 1, -1]]


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (2, 4), (5, 1023), (17,)])
def test_pack_unpack_round_trip_exact(shape):
    g = torch.Generator().manual_seed(sum(shape))
    codes = torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
    packed = pack_ternary(codes)
    rows = shape[0] if len(shape) == 2 else 1
    assert packed.shape == (rows, math.ceil(shape[-1] / 4))
    assert torch.equal(unpack_ternary(packed, shape[-1]).reshape(shape), codes)


def test_base3_pack_layout_by_hand():
    # trits (0→0, +1→1, −1→2) of +1, −1, 0, +1, −1 from the lowest power: 1 + 2·3 + 0·9 + 1·27 + 2·81 = 196
    packed = pack_ternary(torch.tensor([[1, -1, 0, 1, -1, -1]]), "base3")
    assert packed.dtype == torch.uint8 and packed.tolist() == [[196, 2]]  # second byte: −1 then padding
    assert unpack_ternary(packed, 6, "base3").tolist() == [[1, -1, 0, 1, -1, -1]]
    assert pack_ternary(-torch.ones(1, 5, dtype=torch.int8), "base3").item() == 242  # the largest valid byte
    assert invalid_codes(torch.tensor([[242, 243, 255]], dtype=torch.uint8), "base3") == 2
    assert invalid_codes(torch.tensor([[0xFF, 0b00001100]], dtype=torch.uint8)) == 5  # 2-bit: fields of 0b11


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (2, 4), (5, 1023), (17,)])
def test_base3_pack_unpack_round_trip_exact(shape):
    g = torch.Generator().manual_seed(sum(shape) + 1)
    codes = torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
    packed = pack_ternary(codes, "base3")
    rows = shape[0] if len(shape) == 2 else 1
    assert packed.shape == (rows, math.ceil(shape[-1] / 5)) and int(packed.max()) <= 242
    assert torch.equal(unpack_ternary(packed, shape[-1], "base3").reshape(shape), codes)
    with pytest.raises(CompressionError, match="packing="):
        pack_ternary(codes, "3bit")


def test_base3_artifact_is_smaller_and_computes_the_same_function(tmp_path):
    model = tiny("tiny-bert", head="cls", n_classes=2)
    fq = ternarize(model, "twn").eval()
    save_checkpoint(tmp_path / "fp", model.state_dict(), model.config)
    save_packed(fq, tmp_path / "two")
    save_packed(fq, tmp_path / "b3", packing="base3")
    two, b3 = size_report(tmp_path / "fp", tmp_path / "two"), size_report(tmp_path / "fp", tmp_path / "b3")
    expect = sum(m.latent_weight.shape[0] * math.ceil(m.latent_weight.shape[1] / 5) for _, m in ternary_modules(fq))
    assert b3["tensor_bytes"]["packed_codes"] == expect < two["tensor_bytes"]["packed_codes"]
    assert b3["tensor_bytes"]["full_precision"] == two["tensor_bytes"]["full_precision"]
    assert b3["weights_ratio"] > two["weights_ratio"]
    block = json.loads((tmp_path / "b3" / "config.json").read_text())["quantization"]
    assert block["format"] == "morphlm-ternary-base3" and block["bits_per_weight"] == 1.6
    with torch.no_grad():
        ref = fq(IDS).logits
        for mode in ("unpack", "dequant"):
            assert torch.allclose(load_packed(tmp_path / "b3", mode=mode)(IDS).logits, ref, atol=1e-6, rtol=0), mode
        a = load_packed(tmp_path / "b3", mode="int8")(IDS).logits
        b = load_packed(tmp_path / "two", mode="int8")(IDS).logits
    assert torch.equal(a, b)  # the same int8 codes once decoded
    # a corrupted byte (> 242) is refused with the layout named
    path = tmp_path / "b3" / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    start, _ = json.loads(bytes(data[8:header]))["blocks.0.mlp.fc1.weight_packed"]["data_offsets"]
    data[header + start] = 250
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="invalid base-3 byte"):
        load_packed(tmp_path / "b3", verify=False)


def test_pack_rejects_non_ternary():
    with pytest.raises(CompressionError, match="-1, 0"):
        pack_ternary(torch.tensor([[0, 2]]))


# ---------------------------------------------------------------------------- packed == fake quant
@pytest.mark.parametrize("preset,kw", [("tiny-bert", {}), ("tiny-llama", {}),
                                       ("tiny-bert", {"head": "cls", "n_classes": 3})])
def test_packed_logits_equal_fake_quant_logits(tmp_path, preset, kw):
    model = tiny(preset, **kw)
    fq = ternarize(model, "twn").eval()
    assert fq is not model and isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)  # a copy
    save_packed(fq, tmp_path / "p")
    with torch.no_grad():
        ref = fq(IDS).logits
        # unpack/dequant decode exactly the α·b tensor the fake-quant model multiplies by, and quantize
        # activations with the same function: the same float operations, so equal up to summation order
        for mode in ("unpack", "dequant"):
            out = load_packed(tmp_path / "p", mode=mode)(IDS).logits
            assert torch.allclose(out, ref, atol=1e-6, rtol=0), mode
        # int8: the integer matmul is exact while the float path rounds (~1e-7 relative); such a difference
        # can move an activation across a rounding boundary of the 8-bit grid (one step 1/s ≤ 2.5/127),
        # which perturbs every later logit a little: we ask for 1% of the logit range (a wrong scale or
        # code would be off by O(100%); the module-level test below checks int8 linears to 1e-5)
        out = load_packed(tmp_path / "p", mode="int8")(IDS).logits
    assert torch.allclose(out, ref, rtol=0, atol=0.01 * ref.abs().max().item())


def test_int8_packed_linear_matches_fake_quant_linear():
    lin = torch.nn.Linear(37, 11)
    cfg = TernaryConfig()
    for gran in ("layer", "row"):
        tl = TernaryLinear.from_linear(lin, cfg, gran)
        codes, alpha = tl.ternary()
        pl = PackedTernaryLinear(37, 11, True, gran, 8, 2.5)
        pl.weight_packed.copy_(pack_ternary(codes))
        pl.weight_scale.copy_(alpha.reshape(-1))
        pl.bias.copy_(lin.bias)
        pl.set_mode("int8")
        x = torch.randn(2, 5, 37)
        with torch.no_grad():
            assert torch.allclose(pl(x), tl(x), atol=1e-5, rtol=1e-5)


def test_ternarize_targets_and_checkpoint_compatible_state(tmp_path):
    model = tiny("tiny-bert", head="cls", n_classes=2)
    fq = ternarize(model, "lat", embedding="layer", act_bits=None)
    names = {n for n, _ in ternary_modules(fq)}
    assert names == {f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")} | {
        "pooler", "tok_emb"}
    assert type(fq.classifier) is torch.nn.Linear and type(fq.pos_emb) is torch.nn.Embedding  # stay float
    assert fq.tok_emb.granularity == "layer" and fq.blocks[0].attn.qkv.cfg.weights == "lat"
    assert ternarize(model, config=TernaryConfig(weights="lat")).pooler.cfg.weights == "lat"
    # the fake-quant model's state dict is the float model's (latent weights under the same names)
    assert fq.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(CompressionError, match="already ternarized"):
        ternarize(fq)
    with pytest.raises(CompressionError, match="weights="):
        TernaryConfig(weights="xnor")
    with pytest.raises(CompressionError, match="ternarized model"):
        save_packed(model, tmp_path / "x")


def test_lat_reads_adam_second_moment_inside_fit():
    model = TransformerLM(ModelConfig.from_name("tiny", n_layers=1, d_model=32, n_heads=2))
    fq = ternarize(model, "lat")
    cb = LATSecondMoment(fq)
    seen = []

    class Spy:
        def on_step_end(self, state, record):
            qkv = fq.blocks[0].attn.qkv
            seen.append(None if qkv.second_moment is None else qkv.second_moment.clone())
            if qkv.second_moment is not None:
                st = state.optimizer.state[qkv.latent_weight]
                assert float(st["step"]) == state.step  # the optimizer has stepped once more since
    args = TrainArgs(max_steps=3, lr=1e-3, warmup_steps=0, device="cpu", progress=False, eval_at_end=False)
    fit(fq, None, ToyData(seq_len=16, batch_size=4), args, [cb, Spy()])
    assert seen[0] is None and seen[1] is not None and (seen[2] > 0).any()
    # with a diagonal set, LAT's codes follow it (and stay valid ternary codes)
    codes, alpha = fq.blocks[0].attn.qkv.ternary()
    assert set(codes.unique().tolist()) <= {-1, 0, 1} and alpha.item() > 0


# ---------------------------------------------------------------------------- the packed directory
def test_packed_dir_sizes_are_real_bytes(tmp_path):
    cfg = ModelConfig.from_name("tiny-bert", vocab_size=2048, d_model=128, n_heads=4, max_seq_len=32,
                                head="cls", n_classes=2)
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    save_checkpoint(tmp_path / "fp", model.state_dict(), cfg)
    fq = ternarize(model)
    save_packed(fq, tmp_path / "p", tokenizer_json='{"x": 1}')
    rep = size_report(tmp_path / "fp", tmp_path / "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == ["config.json", "lineage.json", "model.safetensors", "tokenizer.json"]
    assert rep["packed_weights_bytes"] == (tmp_path / "p" / "model.safetensors").stat().st_size
    assert rep["packed_dir_bytes"] == dir_bytes(tmp_path / "p") == sum(
        (tmp_path / "p" / f).stat().st_size for f in files)
    assert artifact_bytes(tmp_path / "p") == rep["packed_weights_bytes"] + (tmp_path / "p" / "config.json").stat().st_size
    # codes: exactly rows·ceil(cols/4) bytes per ternary tensor
    expect = sum(m.latent_weight.shape[0] * math.ceil(m.latent_weight.shape[1] / 4) for _, m in ternary_modules(fq))
    assert rep["tensor_bytes"]["packed_codes"] == expect
    assert rep["weights_ratio"] == rep["fp32_weights_bytes"] / rep["packed_weights_bytes"]
    assert rep["weights_ratio"] > 10  # ternary weights dominate this model: close to 16× at 2 of 32 bits
    block = json.loads((tmp_path / "p" / "config.json").read_text())["quantization"]
    assert block["method"] == "ternary" and block["modules"]["tok_emb"]["granularity"] == "row"
    # float16 scales and full-precision rest: smaller still, and the loaded model barely moves
    save_packed(fq, tmp_path / "h", scale_dtype="float16", rest_dtype="float16")
    half = size_report(tmp_path / "fp", tmp_path / "h")
    assert half["packed_weights_bytes"] < rep["packed_weights_bytes"]
    assert half["tensor_bytes"]["scales"] * 2 == rep["tensor_bytes"]["scales"]
    ids = torch.randint(0, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = load_packed(tmp_path / "p", mode="unpack")(ids).logits, load_packed(tmp_path / "h", mode="unpack")(ids).logits
    assert torch.allclose(a, b, atol=0.02 * a.abs().max().item())


def test_corrupted_packed_dir_gives_clear_errors(tmp_path):
    fq = ternarize(tiny())
    save_packed(fq, tmp_path / "p")
    path = tmp_path / "p" / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    meta = json.loads(bytes(data[8:header]))
    start, _ = meta["blocks.0.mlp.fc1.weight_packed"]["data_offsets"]
    data[header + start] = 0xFF  # four fields of code 3
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity hash"):
        load_model(tmp_path / "p")
    with pytest.raises(CheckpointError, match="invalid 2-bit code"):
        load_packed(tmp_path / "p", verify=False)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="unreadable|integrity"):
        load_model(tmp_path / "p")
    with pytest.raises(CheckpointError, match="quantized"):  # cannot be used as float weights
        from morphlm.train.checkpoint import load_state_dict

        load_state_dict(tmp_path / "p", verify=False)
    with pytest.raises(CompressionError, match="not empty"):
        save_packed(fq, tmp_path / "p")


def test_int8_baseline_runs_and_round_trips(tmp_path):
    model = tiny("tiny-bert", head="cls", n_classes=2)
    save_checkpoint(tmp_path / "fp", model.state_dict(), model.config)
    q = int8_dynamic(model)
    if int8_backend() == "torchao":  # the maintained path; torch.ao only where torchao is missing
        assert type(q.blocks[0].attn.qkv.weight).__name__ == "Int8Tensor"
    else:
        assert q.blocks[0].attn.qkv.__module__.startswith("torch.ao")
    summary = quantize_checkpoint(tmp_path / "fp", tmp_path / "i8", "int8")
    loaded = load_model(tmp_path / "i8")
    with torch.no_grad():
        a, b, ref = q(IDS).logits, loaded(IDS).logits, model(IDS).logits
    assert torch.equal(a, b)  # the stored int8 weights rebuild the same modules
    assert (a - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
    assert summary["size"]["packed_weights_bytes"] < summary["size"]["fp32_weights_bytes"]
    with pytest.raises(CompressionError, match="CPU"):
        from morphlm.compress.quantize import load_int8

        load_int8(tmp_path / "i8", device="meta")
    with pytest.raises(CompressionError, match="already quantized"):
        quantize_checkpoint(tmp_path / "i8", tmp_path / "again", "ternary")


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    g = torch.Generator().manual_seed(0)
    pos = "good great fine nice lovely".split()
    neg = "bad awful poor sad ugly".split()
    filler = "the a film plot was and it is this".split()

    def rows(n):
        out = ["sentence\tlabel"]
        for _ in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            words = [filler[int(i)] for i in torch.randint(0, len(filler), (6,), generator=g)]
            cue = (pos if label else neg)[int(torch.randint(0, 5, (1,), generator=g))]
            words.insert(int(torch.randint(0, 6, (1,), generator=g)), cue)
            out.append(" ".join(words) + f"\t{label}")
        return "\n".join(out) + "\n"

    (d / "train.tsv").write_text(rows(160))
    (d / "dev.tsv").write_text(rows(48))
    return d


def test_cli_distil_ternarize_pack_reload_eval(tmp_path, task_files):
    pre, cls, q, i8 = (tmp_path / n for n in ("pre", "cls", "q", "i8"))
    cli("train", "--preset", "tiny-bert", "--corpus", "stdlib", "--max-bytes", 100000, "--max-steps", 3,
        "--seq-len", 32, "--batch-size", 8, "--out", pre)
    cli("train", "--preset", "tiny-bert", "--head", "cls", "--init", pre, "--task-train", task_files / "train.tsv",
        "--task-val", task_files / "dev.tsv", "--max-steps", 15, "--batch-size", 16, "--seq-len", 16, "--lr", 3e-3,
        "--out", cls)
    res = cli("quantize", cls, "--method", "ternary", "--weights", "lat", "--steps", 4, "--lr", 1e-3, "--out", q)
    assert "smaller" in res.stdout and "QAT 4 steps" in res.stdout
    lineage = json.loads((q / "lineage.json").read_text())
    assert lineage["verb"] == "quantize" and lineage["steps"] == 4 and lineage["flops"] > 0
    assert lineage["distill"]["stage"] == "full" and lineage["data"]["task_train"].endswith("train.tsv")
    assert lineage["parents"][0]["sha256"] == json.loads((cls / "config.json").read_text())["weights_sha256"]
    fp = json.loads(cli("eval", cls, "--json").stdout.strip().splitlines()[-1])
    m = json.loads(cli("eval", q, "--json", "--latency", "--latency-runs", 2).stdout.strip().splitlines()[-1])
    assert 0.0 <= m["accuracy"] <= 1.0 and m["val_loss"] > 0
    assert m["params"] == fp["params"] == load_model(cls).num_parameters()
    assert m["bytes_on_disk"] == ckpt.shipped_bytes(q) < fp["bytes_on_disk"]  # weights + config + tokenizer
    assert m["dir_bytes"] == ckpt.total_bytes(q) > m["bytes_on_disk"]  # + lineage.json
    assert m["latency_b1_median_ms"] > 0 and m["latency_b32_p90_ms"] >= m["latency_b32_median_ms"]
    assert "latency_b1_median_ms" not in fp  # off by default
    # the reloaded packed model runs from its uint8 codes
    model = load_model(q)
    assert isinstance(model.blocks[0].mlp.fc1, PackedTernaryLinear)
    assert model.blocks[0].mlp.fc1.weight_packed.dtype == torch.uint8
    b3 = tmp_path / "b3"
    cli("quantize", cls, "--packing", "base3", "--out", b3)  # post-training, 1.6 bits per weight
    mb3 = json.loads(cli("eval", b3, "--json").stdout.strip().splitlines()[-1])
    assert mb3["bytes_on_disk"] < m["bytes_on_disk"] and mb3["params"] == fp["params"]
    assert "packing=" in cli("quantize", cls, "--packing", "3bit", "--out", tmp_path / "z", code=2).output
    cli("quantize", cls, "--method", "int8", "--out", i8)
    m8 = json.loads(cli("eval", i8, "--json", "--device", "cpu").stdout.strip().splitlines()[-1])
    assert abs(m8["accuracy"] - fp["accuracy"]) <= 0.25 and m8["bytes_on_disk"] < fp["bytes_on_disk"]
    # bad input: one clear line
    assert "not empty" in cli("quantize", cls, "--out", q, code=2).output
    assert "unknown quantization method" in cli("quantize", cls, "--method", "int4", "--out", tmp_path / "z",
                                                code=2).output
    assert "--task-train" in cli("quantize", cls, "--steps", 2, "--task-train", task_files / "train.tsv",
                                 "--out", tmp_path / "z", code=2).output
