"""`morphlm quantize`: checkpoint directory in, quantized checkpoint directory out.

Two methods:

* ``ternary`` — TernaryBERT (see :mod:`.ternary`): ternarize a copy of the float model (TWN or LAT),
  optionally train it for ``steps`` with distillation-aware QAT from the float model (the teacher), then
  pack it to 2 bits per weight (:mod:`.packed`).
* ``int8`` — the baseline: dynamic int8 quantization of every nn.Linear — int8 weights, activations
  quantized per batch at run time. It goes through torchao (PyPI ``torchao``, PyTorch's maintained
  quantization library): ``torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())``,
  symmetric per-row (per output channel) int8 weights and symmetric per-token int8 activations. Where
  torchao is not installed, PyTorch's deprecated ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear},
  dtype=torch.qint8)`` (per-tensor weights, CPU only; "will be removed" per its own warning, yet still present
  in torch 2.13) is the fallback, said once in the log. Neither module can be saved without pickling, which
  morphlm never does, so we store what each linear holds — its int8 weight, scales (and the torch.ao zero
  point), its bias — in safetensors (config.json: ``quantization.method = "int8_dynamic"``, ``backend``
  torchao | torch.ao) and rebuild the modules on load with the backend that wrote them. Embeddings, norms and
  the tied LM head stay float32 (both backends only convert nn.Linear). On CPU without ``torch.compile``,
  torchao's int8 forward is not faster than float32 (it quantizes activations in eager PyTorch); the
  compression benchmark reports the latency as measured.

In Python, ``quantize_(model, TernaryConfig(...) | Int8Config())`` quantizes a model in place (the torchao
style: the config's type picks the handler from :data:`QUANTIZE_HANDLERS`; a new method registers its config
class with :func:`register_quantize_handler`). ``quantize_checkpoint`` is the directory form behind
``morphlm quantize``, and goes through ``quantize_``.

Both outputs are ordinary checkpoint directories: ``morphlm eval`` loads them through the quantized
loaders registered with :mod:`morphlm.train.checkpoint`, and their size is their bytes on disk.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from .errors import CompressionError, StrictConfig
from .packed import _check_out_dir, _check_packing, save_packed, size_report
from .ternary import TernaryConfig, qat_distill, ternarize_

log = logging.getLogger("morphlm.compress.quantize")

METHODS = ("ternary", "int8")
INT8_API = "torch.ao.quantization.quantize_dynamic({nn.Linear}, dtype=torch.qint8)"
TORCHAO_API = "torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())"
_INT8_KEYS = ("weight_int8", "weight_scale", "weight_zero_point", "bias")
_said_fallback = False


# ---------------------------------------------------------------------------- int8 dynamic baseline
@contextlib.contextmanager
def _quiet():
    """Silence torch.ao.quantization's deprecation warnings (the API is recorded in the checkpoint)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        yield


def torchao_int8_config():
    """torchao's ``Int8DynamicActivationInt8WeightConfig`` class, or None where torchao is not importable.

    Importing torchao logs a warning for each optional CUDA extension a CPU machine cannot load and torch
    logs one about its enum registration; those are silenced for the import (they do not affect the int8 CPU
    path)."""
    names = ("torchao", "torch.utils._pytree")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    except ImportError:
        return None
    finally:
        for n, lvl in zip(names, levels):
            logging.getLogger(n).setLevel(lvl)
    return Int8DynamicActivationInt8WeightConfig


def int8_backend() -> str:
    """``torchao`` when it is importable, else ``torch.ao`` (the deprecated fallback, logged once)."""
    global _said_fallback
    if torchao_int8_config() is not None:
        return "torchao"
    if not _said_fallback:
        log.warning("torchao is not installed: int8 falls back to the deprecated torch.ao.quantization."
                    "quantize_dynamic (per-tensor weights); `pip install torchao` (or morphlm[int8]) for the "
                    "maintained path")
        _said_fallback = True
    return "torch.ao"


def _dynamic_linear_type():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return DynamicLinear


def _torchao_int8_(model: nn.Module) -> nn.Module:
    from torchao.quantization import quantize_ as ao_quantize_

    config_cls = torchao_int8_config()
    # set_inductor_config=False: this model runs eagerly; torchao would otherwise change global inductor flags
    ao_quantize_(model, config_cls(set_inductor_config=False))
    return model


def _torchao_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and type(m.weight).__name__ == "Int8Tensor"]


def int8_dynamic(model: nn.Module, inplace: bool = False, *, backend: str | None = None) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear: torchao's int8 weights + dynamic int8 activations, or,
    where torchao is missing (or ``backend="torch.ao"``), PyTorch's deprecated quantize_dynamic (CPU only)."""
    backend = backend or int8_backend()
    if backend not in ("torchao", "torch.ao"):
        raise CompressionError(f"unknown int8 backend {backend!r}; use torchao or torch.ao")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise CompressionError("int8 dynamic quantization runs on CPU only; move the model with .cpu() first")
    target = model if inplace else copy.deepcopy(model)
    if backend == "torchao":
        if torchao_int8_config() is None:
            raise CompressionError("the int8 backend 'torchao' is not installed; `pip install torchao`")
        return _torchao_int8_(target).eval()
    from torch.ao.quantization import quantize_dynamic

    with _quiet():
        q = quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return q.eval()


def _int8_backend_of(qmodel: nn.Module) -> str | None:
    if _torchao_linears(qmodel):
        return "torchao"
    DynamicLinear = _dynamic_linear_type()
    return "torch.ao" if any(isinstance(m, DynamicLinear) for m in qmodel.modules()) else None


def int8_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(safetensors-ready tensors, names of the quantized linears) of an int8 dynamic model (either backend):
    ``NAME.weight_int8`` (out, in) int8, ``NAME.weight_scale`` (torchao: float32 (out, 1) per row; torch.ao:
    float64 (1,) with ``NAME.weight_zero_point``), ``NAME.bias``; every other parameter/buffer as is."""
    DynamicLinear = _dynamic_linear_type()
    tensors: dict[str, torch.Tensor] = {}
    linears: list[str] = []
    for name, m in qmodel.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Linear) and type(m.weight).__name__ == "Int8Tensor":  # torchao
            w = m.weight
            tensors[f"{prefix}weight_int8"] = w.qdata.detach().contiguous()
            tensors[f"{prefix}weight_scale"] = w.scale.detach().float().contiguous()
            if m.bias is not None:
                tensors[f"{prefix}bias"] = m.bias.detach().float()
            linears.append(name)
            continue
        if isinstance(m, DynamicLinear):
            w = m.weight()
            if w.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise CompressionError(f"{name}: only per-tensor int8 weights are stored (got {w.qscheme()})")
            tensors[f"{prefix}weight_int8"] = w.int_repr().contiguous()
            tensors[f"{prefix}weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            tensors[f"{prefix}weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            b = m.bias()
            if b is not None:
                tensors[f"{prefix}bias"] = b.detach().float()
            linears.append(name)
            continue
        for pname, p in m._parameters.items():
            if p is not None:
                tensors[f"{prefix}{pname}"] = p.detach()
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                tensors[f"{prefix}{bname}"] = b.detach()
    return tensors, linears


def save_int8(qmodel: nn.Module, out_dir: str | Path, tokenizer_json: str | None = None,
              lineage: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    backend = _int8_backend_of(qmodel)
    tensors, linears = int8_tensors(qmodel)
    if not linears:
        raise CompressionError("save_int8 needs a model quantized with int8_dynamic(model)")
    if backend == "torchao":
        import torchao

        block = {"method": "int8_dynamic", "backend": "torchao", "api": TORCHAO_API, "torchao": torchao.__version__,
                 "torch": torch.__version__, "weights": "int8 symmetric per row",
                 "activations": "dynamic int8 symmetric per token", "modules": linears}
    else:
        block = {"method": "int8_dynamic", "backend": "torch.ao", "api": INT8_API, "torch": torch.__version__,
                 "weights": "qint8 per-tensor", "activations": "dynamic per-batch uint8 (quantize_dynamic)",
                 "modules": linears}
    lineage = dict(lineage or {})
    lineage.setdefault("verb", "quantize")
    lineage.setdefault("method", "int8")
    return ckpt.save_checkpoint(out_dir, tensors, qmodel.config, tokenizer_json=tokenizer_json, lineage=lineage,
                                extra_config={"quantization": block})


def load_int8(run_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> nn.Module:
    """Rebuild an int8 dynamic model from its checkpoint directory (CPU), with the backend that wrote it
    (config.json ``quantization.backend``; directories from before torchao have none: torch.ao)."""
    run_dir = Path(run_dir)
    if torch.device(device).type != "cpu":
        raise CompressionError(f"{run_dir} holds an int8 dynamic model, which morphlm runs on CPU only; "
                               f"pass --device cpu")
    cfg, raw = ckpt.read_config(run_dir)
    block = raw.get("quantization") or {}
    backend = block.get("backend", "torch.ao")
    if backend not in ("torchao", "torch.ao"):
        raise ckpt.CheckpointError(f"{run_dir}: config.json names int8 backend {backend!r}; this morphlm reads "
                                   f"torchao and torch.ao int8 directories")
    if backend == "torchao" and torchao_int8_config() is None:
        raise CompressionError(f"{run_dir} holds torchao int8 weights (per-row scales) and torchao is not "
                               f"installed; `pip install torchao` (or morphlm[int8]) to load it")
    state, _ = ckpt.load_state_dict(run_dir, verify=verify, allow_quantized=True)
    model = int8_dynamic(TransformerLM(cfg), inplace=True, backend=backend)
    expected, linears = int8_tensors(model)
    if sorted(linears) != sorted(block.get("modules", [])):
        raise ckpt.CheckpointError(f"{run_dir}: config.json lists quantized linears {block.get('modules')} but the "
                                   f"model has {linears}; the checkpoint is inconsistent — re-export it")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ckpt.CheckpointError(f"{run_dir}: int8 weights do not fit config.json (missing {missing[:4]}, "
                                   f"unexpected {unexpected[:4]}); the files come from different exports")
    for key, t in state.items():
        if t.shape != expected[key].shape or t.dtype != expected[key].dtype:
            raise ckpt.CheckpointError(f"{run_dir}: {key} is {t.dtype}{tuple(t.shape)} but the model expects "
                                       f"{expected[key].dtype}{tuple(expected[key].shape)}; the file is corrupted")
    with torch.no_grad():
        if backend == "torchao":
            for name in linears:  # copy the stored codes and per-row scales into the quantized weights
                m = model.get_submodule(name)
                m.weight.qdata.copy_(state[f"{name}.weight_int8"])
                m.weight.scale.copy_(state[f"{name}.weight_scale"])
                if m.bias is not None:
                    m.bias.copy_(state[f"{name}.bias"])
        else:
            with _quiet():
                for name in linears:
                    m = model.get_submodule(name)
                    w = torch._make_per_tensor_quantized_tensor(state[f"{name}.weight_int8"],
                                                                float(state[f"{name}.weight_scale"][0]),
                                                                int(state[f"{name}.weight_zero_point"][0]))
                    m.set_weight_bias(w, state.get(f"{name}.bias"))
        rest = {k: v for k, v in state.items() if not any(k == f"{n}.{s}" for n in linears for s in _INT8_KEYS)}
        for key, t in rest.items():  # module by module: load_state_dict would recurse into the quantized linears
            owner, _, attr = key.rpartition(".")
            mod = model.get_submodule(owner)
            target = mod._parameters.get(attr) if attr in mod._parameters else mod._buffers[attr]
            target.copy_(t)
    model.quantization = block
    return model.eval()


def _int8_loader(run_dir: Path, device="cpu", verify: bool = True):
    return load_int8(run_dir, device=device, verify=verify)


ckpt.QUANTIZED_LOADERS["int8_dynamic"] = _int8_loader


# ---------------------------------------------------------------------------- quantize_: config type → handler
@dataclasses.dataclass
class Int8Config(StrictConfig):
    """Dynamic int8 quantization of every nn.Linear (:func:`int8_dynamic`): torchao's
    Int8DynamicActivationInt8WeightConfig (per-row int8 weights, per-token int8 activations), or torch.ao's
    deprecated quantize_dynamic where torchao is missing; CPU inference. It has no options."""


QuantizeHandler = Callable[[nn.Module, Any], nn.Module]
QUANTIZE_HANDLERS: dict[type, QuantizeHandler] = {}


def register_quantize_handler(config_type: type) -> Callable[[QuantizeHandler], QuantizeHandler]:
    """Declare ``handler(model, config) -> model`` (quantizes ``model`` in place) for configs of ``config_type``."""
    def deco(handler: QuantizeHandler) -> QuantizeHandler:
        QUANTIZE_HANDLERS[config_type] = handler
        return handler
    return deco


def quantize_(model: nn.Module, config: Any) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says and return it; the config's type picks the handler
    (:data:`QUANTIZE_HANDLERS`, subclasses included): ``TernaryConfig`` swaps linears and the word embedding
    for trainable fake-quant ternary modules (TernaryBERT; pack them with ``packed.save_packed``),
    ``Int8Config`` applies dynamic int8 quantization through torchao (torch.ao where torchao is missing; CPU)."""
    return _handler_for(config)(model, config)


def _handler_for(config: Any) -> QuantizeHandler:
    handler = next((QUANTIZE_HANDLERS[t] for t in type(config).__mro__ if t in QUANTIZE_HANDLERS), None)
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in QUANTIZE_HANDLERS))
        raise CompressionError(f"quantize_ has no handler for a config of type {type(config).__name__}; pass an "
                               f"instance of one of the registered config types: {known}")
    return handler


@register_quantize_handler(TernaryConfig)
def _ternary_handler(model: nn.Module, config: TernaryConfig) -> nn.Module:
    return ternarize_(model, config)


@register_quantize_handler(Int8Config)
def _int8_handler(model: nn.Module, config: Int8Config) -> nn.Module:
    return int8_dynamic(model, inplace=True)


# ---------------------------------------------------------------------------- drift: what quantization did
@torch.no_grad()
def output_drift(reference: nn.Module, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far ``model``'s outputs moved from ``reference``'s on ``batch`` (1.0 = unchanged):
    ``cosine``: mean over sequences of the cosine between mean-pooled final hidden states (over non-padding
    tokens; the sentence embedding an encoder user sees), ``logits_cosine``: mean cosine of the logits (per
    token for lm/mlm, per example for cls), ``max_abs_logit_diff``."""
    def run(m: nn.Module):
        was = m.training
        m.eval()
        dev = next((t.device for t in m.parameters()), torch.device("cpu"))
        out = m(**{k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                output_hidden_states=True)
        m.train(was)
        return out.hidden_states[-1].float().cpu(), out.logits.float().cpu()

    (h_ref, l_ref), (h, lg) = run(reference), run(model)
    mask = batch.get("attention_mask")
    mask = torch.ones(h.shape[:2]) if mask is None else mask.float().cpu()
    w = mask.unsqueeze(-1)  # (B, T, 1)
    pooled_ref = (h_ref * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)
    pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
    cos = torch.nn.functional.cosine_similarity(pooled, pooled_ref, dim=-1)  # (B,)
    lcos = torch.nn.functional.cosine_similarity(lg, l_ref, dim=-1)  # (B, T) or (B,)
    if lcos.dim() == 2:
        lcos = (lcos * mask).sum() / mask.sum().clamp_min(1.0)
    return {"cosine": float(cos.mean()), "logits_cosine": float(lcos.mean()),
            "max_abs_logit_diff": float((lg - l_ref).abs().max())}


def _drift_batch(src_dir: Path, model: nn.Module, data_spec: dict[str, Any], seed: int,
                 task_val: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(batch, what it is): the first validation batch of the source run's own data (or ``task_val``), else
    (no data recorded or no tokenizer) a fixed random batch of non-special tokens."""
    from ..data import CorpusError, TaskError
    from ..model.config import ConfigError
    from ..train.run import DataSpec, RunSpec, build_data

    cfg = model.config
    tokenizer = ckpt.open_tokenizer(src_dir)
    fields = {f.name for f in dataclasses.fields(DataSpec)}
    dspec = DataSpec(**{k: v for k, v in data_spec.items() if k in fields})
    if task_val:
        dspec.task_train = dspec.task_val = str(task_val)
    has_data = (dspec.task_val if cfg.head == "cls" else data_spec.get("corpus"))
    reason = "the source records no data" if not has_data else "the source has no tokenizer"
    if has_data and tokenizer is not None:
        dspec.eval_batches, dspec.batch_size = 1, min(dspec.batch_size, 16)
        try:
            _, data, _ = build_data(RunSpec(model=cfg, data=dspec), tokenizer)
            batch = next(iter(data.val_batches()))
            what = f"held-out batch of {dspec.task_val if cfg.head == 'cls' else dspec.corpus}"
            return batch, what
        except (CorpusError, TaskError, ConfigError, FileNotFoundError, StopIteration) as e:
            reason = f"its data could not be read ({e})"
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(8, cfg.vocab_size - 1), cfg.vocab_size, (8, min(64, cfg.max_seq_len)), generator=g)
    return {"input_ids": ids}, f"random tokens ({reason})"


# ---------------------------------------------------------------------------- checkpoint-level verb


def quantize_checkpoint(src_dir: str | Path, out_dir: str | Path, method: str | None = None, *,
                        weights: str | None = None, config: TernaryConfig | Int8Config | None = None, steps: int = 0,
                        task_train: str | None = None, task_val: str | None = None, lr: float = 5e-5,
                        batch_size: int | None = None, seq_len: int | None = None, warmup_steps: int | None = None,
                        weight_decay: float = 0.01, temperature: float = 1.0, seed: int = 0, device: str = "auto",
                        scale_dtype: str = "float32", rest_dtype: str = "float32", packing: str = "2bit",
                        progress: bool = True, distill_config=None) -> dict[str, Any]:
    """Quantize the float checkpoint ``src_dir`` into ``out_dir``; returns a summary (sizes, ratios, FLOPs).

    The method is ``config``'s (a :class:`TernaryConfig` or :class:`Int8Config`, applied with :func:`quantize_`),
    or ``method`` (ternary | int8; default ternary) with ``weights`` twn|lat for ternary. ternary: ``steps`` > 0
    trains the ternary model with distillation-aware QAT from the source model on ``task_train``/``task_val``
    (default: the source run's own data) before packing; ``steps`` = 0 packs the post-training ternarization;
    ``packing`` 2bit|base3 (1.6 bits per weight, see :mod:`morphlm.compress.packed`). int8: the PyTorch dynamic
    int8 baseline (torchao; torch.ao where torchao is missing)."""
    from ..train.loop import TrainArgs
    from ..train.run import DataSpec, RunSpec, build_data

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    implied = None
    if config is not None:
        _handler_for(config)  # an unknown config type fails here, naming the registered ones
        implied = "int8" if isinstance(config, Int8Config) else "ternary" if isinstance(config, TernaryConfig) else None
        if implied is None:
            raise CompressionError(f"quantize_checkpoint writes ternary (TernaryConfig) or int8 (Int8Config) "
                                   f"directories; {type(config).__name__} has no on-disk format here")
    if method is not None and implied is not None and method != implied:
        raise CompressionError(f"method={method!r} contradicts config {type(config).__name__} ({implied}); pass one")
    method = implied or method or "ternary"
    if method not in METHODS:
        raise CompressionError(f"unknown quantization method {method!r}; choose one of {METHODS}")
    if method == "ternary":
        _check_packing(packing)  # before any training, not after it
    _, raw = ckpt.read_config(src_dir)
    if raw.get("quantization"):
        raise CompressionError(f"{src_dir} is already quantized ({raw['quantization'].get('method')}); quantize the "
                               f"full-precision checkpoint it was made from")
    ckpt.claim_output_dir(out_dir, "quantize", inputs=[("source", src_dir)], error=CompressionError)
    if steps < 0:
        raise CompressionError(f"steps={steps} must be >= 0 (0 = no QAT, pack the post-training ternarization)")
    if method == "int8" and (steps or task_train or task_val):
        raise CompressionError("the int8 baseline is post-training dynamic quantization: it takes no --max-steps or "
                               "task files; drop them or use --method ternary")
    teacher, _, record = ckpt.open_checkpoint(src_dir, role="source", error=CompressionError)
    tokenizer_json = record.tokenizer_json
    data_spec = dict(record.data_spec)
    lineage: dict[str, Any] = {"verb": "quantize", "method": method, "parents": [record.parent()], "flops": 0.0,
                               "data": data_spec}
    summary: dict[str, Any] = {"method": method, "src": str(src_dir), "out_dir": str(out_dir),
                               "params": teacher.num_parameters()}
    if method == "int8":
        q = quantize_(copy.deepcopy(teacher), config or Int8Config()).eval()
        batch, what = _drift_batch(src_dir, teacher, data_spec, seed)
        lineage["drift"] = summary["drift"] = {**output_drift(teacher, q, batch), "batch": what}
        save_int8(q, out_dir, tokenizer_json, lineage)
    else:
        tcfg = config or TernaryConfig(weights=weights or "twn")
        if weights is not None and weights != tcfg.weights:
            tcfg = dataclasses.replace(tcfg, weights=weights)
        student = quantize_(copy.deepcopy(teacher), tcfg)
        lineage["ternary"] = tcfg.to_dict()
        lineage["steps"] = steps
        if steps > 0:
            tokenizer = ckpt.open_tokenizer(src_dir, "QAT needs the tokenizer the model was trained with",
                                            error=CompressionError)
            fields = {f.name for f in dataclasses.fields(DataSpec)}
            dspec = DataSpec(**{k: v for k, v in data_spec.items() if k in fields})
            if task_train or task_val:
                if not (task_train and task_val):
                    raise CompressionError("pass both --task-train and --task-val (labelled TSV/CSV/JSONL files)")
                dspec.task_train, dspec.task_val = str(task_train), str(task_val)
            if batch_size:
                dspec.batch_size = int(batch_size)
            if seq_len:
                dspec.seq_len = int(seq_len)
            if teacher.config.head == "cls" and not (dspec.task_train and dspec.task_val):
                raise CompressionError(f"{src_dir} is a classifier and its run records no task files; pass "
                                       f"--task-train and --task-val for distillation-aware training")
            args = TrainArgs(max_steps=steps, lr=lr, schedule="linear", min_lr_ratio=0.0,
                             warmup_steps=warmup_steps if warmup_steps is not None else max(steps // 10, 0),
                             weight_decay=weight_decay, beta2=0.999, seed=seed, device=device, progress=progress,
                             out_dir=None)
            spec = RunSpec(model=teacher.config, data=dspec, train=args)
            _, data, _ = build_data(spec, tokenizer)
            dcfg = distill_config
            if dcfg is None:
                from .ternary import ternary_distill_config

                dcfg = ternary_distill_config(teacher, student, temperature)
            result = qat_distill(teacher, student, data, args, dcfg, tokenizer_json=tokenizer_json)
            student = student.cpu()
            lineage["flops"] = result.flops
            lineage["tokens"] = result.tokens
            lineage["data"] = dataclasses.asdict(dspec)
            lineage["distill"] = dcfg.to_dict()
            summary["qat"] = {"steps": result.steps, "flops": result.flops, "final_loss": result.final_loss,
                              "val_loss": result.val_loss,
                              **{k: v for k, v in result.metrics.items() if k.startswith("val_")}}
        batch, what = _drift_batch(src_dir, teacher, data_spec, seed, task_val)
        drift = {**output_drift(teacher.cpu(), student.cpu(), batch), "batch": what}
        lineage["drift"] = summary["drift"] = drift
        if steps == 0:
            summary["warning"] = (
                f"ternary without QAT (--max-steps 0): the packed model's outputs drifted from the float model's "
                f"(cosine {drift['cosine']:.3f} of pooled final hidden states, logits cosine "
                f"{drift['logits_cosine']:.3f} on a {what}); ternarization needs distillation-aware training "
                f"to recover: pass --max-steps N (e.g. 200) with the source's data or --task-train/--task-val")
            log.warning("%s", summary["warning"])
        save_packed(student, out_dir, tokenizer_json, lineage, scale_dtype=scale_dtype, rest_dtype=rest_dtype,
                    packing=packing)
    summary["size"] = size_report(src_dir, out_dir)
    summary["flops"] = lineage["flops"]
    return summary
