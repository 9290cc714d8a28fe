"""The packed ternary formats: 2 bits (or 1.6 bits) per weight on disk, and inference straight from them.

TernaryBERT's released checkpoints are fake-quantized float tensors, no smaller than the original (refs
§5, the maintainers' reply in issue #154). Here the converted model really is small: every ternary
weight tensor is stored as

* ``NAME.weight_packed``: uint8 of shape (rows, ceil(cols/4)) — four 2-bit codes per byte, least
  significant bits first (code of column 4j+k in bits 2k..2k+1 of byte j); code 0 → 0, 1 → +1, 2 → −1
  (sign-magnitude: bit 0 = +1, bit 1 = −1); code 3 is invalid and rejected on load; each row is padded
  with zero codes to a multiple of four columns so a row's bytes can be gathered alone (embeddings);
* ``NAME.weight_scale``: α, one per tensor (shape (1,)) or one per row (shape (rows,)), float32 by
  default (``scale_dtype="float16"`` halves it);

and every other tensor (position/segment embeddings, norms, biases, classifier) as it was (float32, or
float16 with ``rest_dtype``).

``packing="base3"`` (format ``morphlm-ternary-base3``) stores the same codes five to a byte instead of
four: byte = Σₖ tₖ·3ᵏ over the row's columns 5j..5j+4, with trit tₖ = 0 for 0, 1 for +1, 2 for −1
(3⁵ = 243 ≤ 256, so bytes 243..255 are invalid and rejected on load), rows padded with zero trits to a
multiple of five. That is 1.6 bits per weight, 0.02 bits above the log₂3 ≈ 1.585 of an incompressible
ternary symbol, and 20% fewer code bytes than the 2-bit layout; decoding is one gather in a 243 × 5 lookup
table. Everything else (scales, the rest, the decoding modes) is shared by the two layouts; ``"2bit"``
stays the default.

The directory is a normal checkpoint directory (safetensors weights with the sha256 integrity hash in
config.json, tokenizer.json, lineage.json, written atomically through
:func:`morphlm.train.checkpoint.save_checkpoint`); config.json adds a ``quantization`` block with the
format, the activation-quantization settings and one entry (kind, granularity, shape) per packed tensor.
Its size is the bytes on disk (:func:`dir_bytes`, :func:`artifact_bytes`).

Inference runs from the packed buffers (:class:`PackedTernaryLinear`, :class:`PackedTernaryEmbedding`),
in one of three modes (:func:`set_packed_mode`):

* ``unpack``: decode the 2-bit codes to floats on every forward, then a float matmul (no caches at all);
* ``int8``: decode once into int8 codes (1 byte/weight in memory, not on disk), quantize the input to
  8-bit integers exactly as the fake-quant model does, multiply integer by ternary integer with
  ``torch._int_mm`` (int32 accumulation is exact), and scale by α/s — the W2A8 arithmetic itself;
* ``dequant``: decode once into float32 α·b (memory like the float model).

``auto`` picks ``int8`` on CPU when activations are quantized and ``torch._int_mm`` runs, else
``dequant``. Embedding lookups decode only the gathered rows (a tied LM head, which multiplies by the
whole table, decodes it once). All modes compute the fake-quant model's function: ``unpack`` and
``dequant`` with the very same float operations; ``int8`` differs by float rounding (its integer sum is
exact), which can move a later activation across one 8-bit rounding boundary.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from ..train.checkpoint import dir_bytes  # noqa: F401  (re-exported: the size of a checkpoint directory)
from .errors import CompressionError
from .ternary import TernaryConfig, activation_qparams, is_ternarized, quantize_activation, ternary_modules

log = logging.getLogger("morphlm.compress.packed")

FORMAT = "morphlm-ternary-2bit"
FORMAT_BASE3 = "morphlm-ternary-base3"
FORMAT_VERSION = 1
PACKINGS = {"2bit": FORMAT, "base3": FORMAT_BASE3}  # packing name → the format recorded in config.json
_PER_BYTE = {"2bit": 4, "base3": 5}
_BITS = {"2bit": 2.0, "base3": 1.6}
MODES = ("auto", "int8", "unpack", "dequant")
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# ---------------------------------------------------------------------------- packing
def _check_packing(packing: str) -> int:
    if packing not in _PER_BYTE:
        raise CompressionError(f"packing={packing!r}; choose one of {sorted(_PER_BYTE)}")
    return _PER_BYTE[packing]


def _trit_table() -> torch.Tensor:
    """(256, 5) int8: the five values {-1, 0, +1} of every base-3 byte (rows 243..255, invalid, decode to 0)."""
    b = torch.arange(243)
    trits = torch.stack([(b // 3 ** k) % 3 for k in range(5)], dim=1)  # (243, 5) in {0, 1, 2}
    vals = torch.where(trits == 2, torch.full_like(trits, -1), trits).to(torch.int8)
    return torch.cat([vals, torch.zeros(13, 5, dtype=torch.int8)])


_TRITS = _trit_table()
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)


def packed_cols(cols: int, packing: str = "2bit") -> int:
    """Bytes per row of a packed (rows, cols) tensor."""
    return math.ceil(cols / _check_packing(packing))


def pack_ternary(codes: torch.Tensor, packing: str = "2bit") -> torch.Tensor:
    """int tensor of {-1, 0, +1}, shape (rows, cols) (1-D: one row) → uint8 (rows, ceil(cols/4)) for
    ``packing="2bit"`` or (rows, ceil(cols/5)) for ``"base3"`` (layouts in the module docstring)."""
    per = _check_packing(packing)
    c = codes.reshape(1, -1) if codes.dim() == 1 else codes
    if c.dim() != 2:
        raise CompressionError(f"pack_ternary expects a 1-D or 2-D tensor, got shape {tuple(codes.shape)}")
    c = c.to(torch.int16)
    if bool(((c < -1) | (c > 1)).any()):
        raise CompressionError("pack_ternary: codes must be in {-1, 0, +1}")
    u = torch.where(c < 0, torch.full_like(c, 2), c)  # 0→0, +1→1, −1→2
    rows, cols = u.shape
    pad = (-cols) % per
    if pad:
        u = torch.cat([u, torch.zeros(rows, pad, dtype=u.dtype, device=u.device)], dim=1)
    u = u.view(rows, -1, per)  # (rows, nbytes, per)
    if packing == "base3":
        return (u * _POW3.to(u.device)).sum(dim=-1).to(torch.uint8)  # ≤ 242
    u = u.to(torch.uint8)
    return u[..., 0] | (u[..., 1] << 2) | (u[..., 2] << 4) | (u[..., 3] << 6)  # (rows, nbytes)


def unpack_ternary(packed: torch.Tensor, cols: int, packing: str = "2bit") -> torch.Tensor:
    """uint8 (..., nbytes) → int8 codes in {-1, 0, +1} of shape (..., cols)."""
    per = _check_packing(packing)
    if packed.dtype != torch.uint8:
        raise CompressionError(f"unpack_ternary expects uint8, got {packed.dtype}")
    if cols > packed.shape[-1] * per:
        raise CompressionError(f"unpack_ternary: {packed.shape[-1]} bytes hold at most {packed.shape[-1] * per} "
                               f"codes, not {cols}")
    if packing == "base3":
        vals = _TRITS.to(packed.device)[packed.long()]  # (..., nbytes, 5)
    else:
        u = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 3  # (..., nbytes, 4)
        vals = (u & 1).to(torch.int8) - (u >> 1).to(torch.int8)  # 1 → +1, 2 → −1, 0 → 0
    return vals.reshape(*packed.shape[:-1], -1)[..., :cols]


def invalid_codes(packed: torch.Tensor, packing: str = "2bit") -> int:
    """Number of invalid fields (2-bit code 3, or a base-3 byte above 242): a corrupted file."""
    _check_packing(packing)
    if packing == "base3":
        return int((packed > 242).sum())
    both = packed & (packed >> 1) & 0b01010101  # bit 2k set iff field k is 0b11
    return int(_POPCOUNT.to(packed.device)[both.long()].sum())


def _fake_quant_(x: torch.Tensor, bits: int, clip: float | None) -> torch.Tensor:
    """In-place :func:`_fake_quant` of a float32 tensor (a view is fine): the same operations in the same
    order as :func:`activation_qparams` followed by ``q / s``, so the same values."""
    if clip is not None:
        x.clamp_(-clip, clip)
    levels = 2 ** (bits - 1) - 1
    lo, hi = torch.aminmax(x)
    m = torch.maximum(-lo, hi)
    s = torch.where(m > 0, levels / m, torch.ones_like(m))
    return x.mul_(s).round_().div_(s)


# ---------------------------------------------------------------------------- packed modules
def _fake_quant(x: torch.Tensor, bits: int | None, clip: float | None) -> torch.Tensor:
    """The value of :func:`quantize_activation` without its autograd node (inference)."""
    if bits is None:
        return x
    if x.requires_grad:
        return quantize_activation(x, bits, clip)
    q, s = activation_qparams(x, bits, clip)
    return q.div_(s).to(x.dtype)


def _int_mm_works() -> bool:
    try:
        torch._int_mm(torch.ones(2, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


_INT_MM: bool | None = None


class _PackedBase(nn.Module):
    """uint8 codes + scales as buffers; decoding follows ``mode`` (see the module docstring)."""

    def _setup(self, rows: int, cols: int, granularity: str, act_bits: int | None, act_clip: float | None,
               packing: str = "2bit") -> None:
        if granularity not in ("layer", "row"):
            raise CompressionError(f"granularity={granularity!r}; use 'layer' or 'row'")
        self.rows, self.cols, self.granularity, self.packing = rows, cols, granularity, packing
        self.act_bits, self.act_clip = act_bits, act_clip
        self.register_buffer("weight_packed", torch.zeros(rows, packed_cols(cols, packing), dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.zeros(rows if granularity == "row" else 1))
        self.mode = "dequant"
        self._cache: torch.Tensor | None = None

    def logical_numel(self) -> int:
        return self.rows * self.cols

    def set_mode(self, mode: str) -> None:
        global _INT_MM
        if mode not in MODES:
            raise CompressionError(f"packed mode {mode!r}; choose one of {MODES}")
        if mode in ("auto", "int8"):
            if _INT_MM is None:
                _INT_MM = _int_mm_works()
            ok = self.act_bits is not None and _INT_MM and self.weight_packed.device.type == "cpu"
            if mode == "int8" and not ok:
                raise CompressionError("packed mode 'int8' needs quantized activations (act_bits) and torch._int_mm "
                                       "on CPU; use mode 'dequant' or 'unpack'")
            mode = "int8" if ok else "dequant"
        self.mode = mode
        self._cache = None

    def _scale_col(self) -> torch.Tensor:
        return self.weight_scale.float().reshape(-1, 1)  # (rows, 1) or (1, 1)

    def dequantized(self) -> torch.Tensor:
        """α·b as float32 (rows, cols)."""
        if self.mode == "dequant":
            if self._cache is None:
                self._cache = unpack_ternary(self.weight_packed, self.cols, self.packing).float() * self._scale_col()
            return self._cache
        return unpack_ternary(self.weight_packed, self.cols, self.packing).float() * self._scale_col()

    def _apply(self, fn, *args, **kwargs):  # .to(device) etc. invalidate the decoded caches
        self._cache = None
        return super()._apply(fn, *args, **kwargs)


class PackedTernaryLinear(_PackedBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, granularity: str = "layer",
                 act_bits: int | None = 8, act_clip: float | None = 2.5,
                 out_splits: tuple[int, ...] | None = None, packing: str = "2bit") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup(out_features, in_features, granularity, act_bits, act_clip, packing)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.out_splits = tuple(out_splits) if out_splits else None

    @property
    def weight(self) -> torch.Tensor:
        """α·b as float (model code that reads ``lm_head.weight`` directly)."""
        return self.dequantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "int8":
            q, s = activation_qparams(x, self.act_bits, self.act_clip)  # integer codes (as float), scale
            if self._cache is None:
                codes = unpack_ternary(self.weight_packed, self.cols, self.packing)
                self._cache = codes.t().contiguous()  # (in, out) int8
            lead = q.shape[:-1]
            acc = torch._int_mm(q.reshape(-1, self.in_features).to(torch.int8), self._cache)  # (N, out) int32
            y = acc * (self.weight_scale.float().reshape(1, -1) / s)  # int32 · float32 → float32, exact cast
            if self.bias is not None:
                y.add_(self.bias)
            y = y.reshape(*lead, self.out_features).to(x.dtype)
        else:
            x = _fake_quant(x, self.act_bits, self.act_clip)
            y = F.linear(x, self.dequantized().to(x.dtype), self.bias)
        if self.out_splits is not None and self.act_bits is not None:
            if y.requires_grad or y.dtype != torch.float32:
                y = torch.cat([quantize_activation(p, self.act_bits, self.act_clip)
                               for p in y.split(self.out_splits, dim=-1)], dim=-1)
            else:  # inference: quantize q, k, v in place (no allocation, no concatenation copy)
                for part in y.split(self.out_splits, dim=-1):
                    _fake_quant_(part, self.act_bits, self.act_clip)
        return y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.granularity}-wise, mode={self.mode}"


class PackedTernaryEmbedding(_PackedBase):
    """Looks up packed rows and decodes only those; ``weight`` decodes the whole table (tied LM heads)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, granularity: str = "row",
                 packing: str = "2bit") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self._setup(num_embeddings, embedding_dim, granularity, None, None, packing)

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized()

    def set_mode(self, mode: str) -> None:  # lookups never multiply: auto/int8 decode the gathered rows only
        super().set_mode("unpack" if mode in ("auto", "int8") else mode)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "dequant":
            return F.embedding(ids, self.dequantized())
        rows = unpack_ternary(self.weight_packed[ids], self.cols, self.packing).float()  # (..., D)
        scale = self.weight_scale.float()
        return rows * (scale[ids].unsqueeze(-1) if self.granularity == "row" else scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.granularity}-wise, mode={self.mode}"


def set_packed_mode(model: nn.Module, mode: str = "auto") -> nn.Module:
    """Choose how every packed module decodes (auto | int8 | unpack | dequant)."""
    for m in model.modules():
        if isinstance(m, _PackedBase):
            m.set_mode(mode)
    return model


# ---------------------------------------------------------------------------- save
def _dtype(name: str, what: str) -> torch.dtype:
    if name not in _DTYPES:
        raise CompressionError(f"{what}={name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def packed_tensors(model: nn.Module, *, scale_dtype: str = "float32", rest_dtype: str = "float32",
                   packing: str = "2bit") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors to store, the config.json ``quantization`` block) of a fake-quant ternary model."""
    per = _check_packing(packing)
    if not is_ternarized(model):
        raise CompressionError("save_packed needs a ternarized model: call morphlm.compress.ternary.ternarize(model) "
                               "first (and train it with qat_distill for accuracy)")
    sdt, rdt = _dtype(scale_dtype, "scale_dtype"), _dtype(rest_dtype, "rest_dtype")
    cfg: TernaryConfig = getattr(model, "ternary_config", None) or next(m for _, m in ternary_modules(model)).cfg
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    latent_names = set()
    for name, m in ternary_modules(model):
        codes, alpha = m.ternary()
        codes = codes.cpu()
        tensors[f"{name}.weight_packed"] = pack_ternary(codes, packing)
        tensors[f"{name}.weight_scale"] = alpha.reshape(-1).to(sdt).cpu()
        kind = "embedding" if hasattr(m, "num_embeddings") else "linear"
        entry: dict[str, Any] = {"kind": kind, "granularity": m.granularity, "shape": list(codes.shape)}
        if kind == "linear":
            entry["bias"] = m.bias is not None
            entry["out_splits"] = list(m.out_splits) if m.out_splits else None
        modules[name] = entry
        latent_names.add(f"{name}.weight")
    for key, value in model.state_dict().items():
        if key in latent_names:
            continue
        value = value.detach().cpu()
        tensors[key] = value.to(rdt) if value.is_floating_point() else value
    block = {
        "method": "ternary", "format": PACKINGS[packing], "version": FORMAT_VERSION, "weights": cfg.weights,
        "embedding": cfg.embedding, "act_bits": cfg.act_bits, "act_clip": cfg.act_clip,
        "quantize_qkv_output": cfg.quantize_qkv_output, "bits_per_weight": _BITS[packing],
        "codes": {"0": 0, "+1": 1, "-1": 2},
        "packing": (f"{per} codes per byte, " + ("least significant bits first" if per == 4 else
                                                 "byte = sum of code_k * 3**k") +
                    f"; rows padded with code 0 to a multiple of {per}"),
        "scale_dtype": scale_dtype, "rest_dtype": rest_dtype, "modules": modules,
    }
    return tensors, block


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CompressionError(f"{out_dir} is not empty; choose a new output directory (or pass overwrite=True)")


def save_packed(model: nn.Module, out_dir: str | Path, tokenizer_json: str | None = None,
                lineage: dict[str, Any] | None = None, *, scale_dtype: str = "float32",
                rest_dtype: str = "float32", packing: str = "2bit", overwrite: bool = False) -> Path:
    """Pack a fake-quant ternary model (see :func:`ternarize`) into a checkpoint directory; returns it.
    ``packing``: "2bit" (4 weights per byte, the default) or "base3" (5 per byte, 1.6 bits per weight)."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    tensors, block = packed_tensors(model, scale_dtype=scale_dtype, rest_dtype=rest_dtype, packing=packing)
    lineage = dict(lineage or {})
    lineage.setdefault("verb", "quantize")
    lineage.setdefault("method", "ternary")
    return ckpt.save_checkpoint(out_dir, tensors, model.config, tokenizer_json=tokenizer_json, lineage=lineage,
                                extra_config={"quantization": block})


# ---------------------------------------------------------------------------- load
def block_packing(block: dict[str, Any]) -> str:
    """The packing ("2bit" | "base3") of a config.json quantization block, from its format name."""
    for packing, fmt in PACKINGS.items():
        if block.get("format") == fmt:
            return packing
    raise CompressionError(f"packed format {block.get('format')!r} is not one this morphlm reads "
                           f"({', '.join(PACKINGS.values())}); upgrade morphlm")


def build_packed_model(cfg, block: dict[str, Any]) -> TransformerLM:
    """A TransformerLM of ``cfg`` whose ternary modules are empty packed modules laid out by ``block``."""
    packing = block_packing(block)
    model = TransformerLM(cfg)
    for name, entry in block["modules"].items():
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise CompressionError(f"the quantization block names module {name!r}, which this model config "
                                   f"does not have; config.json and the weights do not belong together") from exc
        rows, cols = (int(n) for n in entry["shape"])
        if entry["kind"] == "embedding":
            new = PackedTernaryEmbedding(rows, cols, entry["granularity"], packing)
        elif entry["kind"] == "linear":
            splits = tuple(entry["out_splits"]) if entry.get("out_splits") else None
            new = PackedTernaryLinear(cols, rows, bool(entry.get("bias")), entry["granularity"], block.get("act_bits"),
                                      block.get("act_clip"), splits, packing)
        else:
            raise CompressionError(f"unknown packed module kind {entry['kind']!r} for {name}")
        model.set_submodule(name, new)
    return model


def load_packed(run_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                mode: str = "auto") -> TransformerLM:
    """Load a packed ternary checkpoint directory as a runnable model (eval mode) that computes from the
    packed codes; ``mode`` as in :func:`set_packed_mode`."""
    run_dir = Path(run_dir)
    cfg, raw = ckpt.read_config(run_dir)
    block = raw.get("quantization")
    if not isinstance(block, dict) or block.get("method") != "ternary":
        raise CompressionError(f"{run_dir} is not a packed ternary checkpoint (config.json has no ternary "
                               f"quantization block); load it with morphlm.train.checkpoint.load_model")
    if block.get("format") not in PACKINGS.values() or int(block.get("version", 0)) > FORMAT_VERSION:
        raise CompressionError(f"{run_dir}: packed format {block.get('format')!r} v{block.get('version')} is not "
                               f"one this morphlm reads ({', '.join(PACKINGS.values())} v{FORMAT_VERSION}); "
                               f"upgrade morphlm")
    packing = block_packing(block)
    state, _ = ckpt.load_state_dict(run_dir, verify=verify, allow_quantized=True)
    model = build_packed_model(cfg, block)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ckpt.CheckpointError(f"{run_dir}: packed weights do not fit config.json (missing {missing[:4]}, "
                                   f"unexpected {unexpected[:4]}); the files come from different exports")
    for key, t in state.items():
        if t.shape != expected[key].shape:
            raise ckpt.CheckpointError(f"{run_dir}: {key} has shape {tuple(t.shape)} but config.json implies "
                                       f"{tuple(expected[key].shape)}; the checkpoint is corrupted or mixed")
        if key.endswith("weight_packed"):
            if t.dtype != torch.uint8:
                raise ckpt.CheckpointError(f"{run_dir}: {key} is {t.dtype}, not uint8; not a packed ternary tensor")
            bad = invalid_codes(t, packing)
            if bad:
                what = "2-bit code(s) (3)" if packing == "2bit" else "base-3 byte(s) (> 242)"
                raise ckpt.CheckpointError(f"{run_dir}: {key} holds {bad} invalid {what}; the file is "
                                           f"corrupted — re-export it with `morphlm quantize`")
    model.load_state_dict(state)  # copies cast float16 scales/rest up to the float32 buffers
    model.requires_grad_(False)  # an inference artifact: train the fake-quant model instead
    model.quantization = block
    model.to(device).eval()
    set_packed_mode(model, mode)
    emb = model.tok_emb
    if mode == "auto" and isinstance(emb, PackedTernaryEmbedding) and cfg.head != "cls" and model.lm_head is None:
        emb.set_mode("dequant")  # a tied LM head multiplies by the whole table every forward: decode it once
    return model


def artifact_bytes(run_dir: str | Path) -> int:
    """Bytes of the files needed to run the weights: model.safetensors + config.json."""
    run_dir = Path(run_dir)
    return sum((run_dir / f).stat().st_size for f in (ckpt.MODEL_FILE, ckpt.CONFIG_FILE) if (run_dir / f).exists())


def size_report(fp32_dir: str | Path, packed_dir: str | Path) -> dict[str, Any]:
    """Bytes on disk of a float checkpoint and its quantized export, and the ratios (float ÷ quantized), plus
    the bytes of the quantized weights file taken by weight codes (2-bit packed or int8), scales and
    full-precision tensors, and its five largest tensors (what dominates the size)."""
    fp32_dir, packed_dir = Path(fp32_dir), Path(packed_dir)
    from safetensors import safe_open

    shares = {"packed_codes": 0, "scales": 0, "full_precision": 0}
    largest: dict[str, int] = {}
    with safe_open(str(packed_dir / ckpt.MODEL_FILE), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            nbytes = t.numel() * t.element_size()
            kind = ("packed_codes" if key.endswith(("weight_packed", "weight_int8")) else
                    "scales" if key.endswith(("weight_scale", "weight_zero_point")) else "full_precision")
            shares[kind] += nbytes
            largest[key] = nbytes
    fw, pw = (d / ckpt.MODEL_FILE for d in (fp32_dir, packed_dir))
    out = {
        "fp32_weights_bytes": fw.stat().st_size, "packed_weights_bytes": pw.stat().st_size,
        "fp32_artifact_bytes": artifact_bytes(fp32_dir), "packed_artifact_bytes": artifact_bytes(packed_dir),
        "fp32_dir_bytes": dir_bytes(fp32_dir), "packed_dir_bytes": dir_bytes(packed_dir),
        "tensor_bytes": shares,
        "largest_tensors": dict(sorted(largest.items(), key=lambda kv: -kv[1])[:5]),
    }
    out["weights_ratio"] = out["fp32_weights_bytes"] / out["packed_weights_bytes"]
    out["artifact_ratio"] = out["fp32_artifact_bytes"] / out["packed_artifact_bytes"]
    out["dir_ratio"] = out["fp32_dir_bytes"] / out["packed_dir_bytes"]
    return out


def _loader(run_dir: Path, device="cpu", verify: bool = True):
    return load_packed(run_dir, device=device, verify=verify)


ckpt.QUANTIZED_LOADERS["ternary"] = _loader
