"""GGUF (llama.cpp's single-file format) -> a native morphlm checkpoint, and chat prompts for the result.

:func:`read_gguf` reads a llama-architecture GGUF file with the `gguf` package (``GGUFReader``; weights
dequantized to float32 by ``gguf.quants.dequantize``, numpy only) into a :class:`ModelConfig`, a native state
dict and a ``tokenizers`` tokenizer.json; :func:`import_gguf` writes them as a checkpoint directory
(``morphlm convert FILE.gguf DIR``). What is mapped:

- config: ``llama.block_count``, ``embedding_length``, ``feed_forward_length``, ``attention.head_count`` /
  ``head_count_kv`` (grouped-query attention), ``rope.freq_base``, ``attention.layer_norm_rms_epsilon``,
  ``context_length`` (the model's max_seq_len); SwiGLU FFN, RMSNorm before each sub-layer, no biases; the
  embedding is tied to the output when the file has no ``output.weight``.
- rotary positions: llama.cpp rotates adjacent pairs (x[2i], x[2i+1]) and its converter permutes the rows of
  every head of ``attn_q`` / ``attn_k`` so that a model trained with the "rotate half" pairing (x[i],
  x[i + d/2]; Su et al. 2021, arXiv 2104.09864, eq. 34, as LLaMA's reference code lays it out) computes the same
  function. morphlm rotates halves, so the permutation is undone: GGUF row ``2i + j`` of a head (pair i, member
  j) goes back to row ``j·d/2 + i``.
- tokenizer (``tokenizer.ggml.model = gpt2``): byte-level BPE from ``tokenizer.ggml.tokens`` + ``merges``; the
  pre-tokenizer named by ``tokenizer.ggml.pre`` (``smollm``: single digits, then byte-level without a prefix
  space; ``gpt2``/absent: byte-level); tokens of type 3 (control) are registered as special (otherwise
  ``<|im_start|>`` would be split into characters); the bos/eos/unk/padding ids become the token roles.
- ``tokenizer.chat_template`` and the end-of-sequence token are kept in the checkpoint's lineage.json
  (``chat_template``, ``eos_token``: tokenizer.json has no field for a causal model's eos), where
  :func:`chat_texts` reads them.

Other architectures, tensor types or tokenizer models raise :class:`GGUFError` naming what is supported, before
anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.config import ConfigError, ModelConfig
from .hf_maps import InteropError

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
SUPPORTED_GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
SUPPORTED_GGUF_TOKENIZERS = ("gpt2",)
SUPPORTED_GGUF_PRETOKENIZERS = ("smollm", "gpt2", "default")
CONTROL_TOKEN_TYPE = 3  # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte

# The ChatML template of SmolLM2-Instruct (Allal et al. 2025, arXiv 2502.02737), used by `generate --chat` when a
# checkpoint records none. Jinja, rendered with messages=[{"role", "content"}] and add_generation_prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class GGUFError(InteropError):
    """A GGUF file morphlm cannot import; the message names the problem and what is supported."""


@dataclass
class GGUFModel:
    """What :func:`read_gguf` found: the native config and weights, the tokenizer and the file's metadata."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer_json: str
    chat_template: str | None
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> tensors of that type
    name: str | None = None
    eos_token: str | None = None  # the file's end-of-sequence token (SmolLM2-Instruct: <|im_end|>)

    def build(self):
        """``(TransformerLM in eval mode, Tokenizer)`` in memory, without writing a checkpoint."""
        from ..data.tokenizer import Tokenizer
        from ..model.transformer import TransformerLM

        model = TransformerLM(self.config)
        model.load_state_dict(self.state)
        return model.eval(), Tokenizer.from_json_str(self.tokenizer_json)


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise GGUFError("reading GGUF files needs the `gguf` package; pip install gguf") from exc
    if not path.is_file():
        raise GGUFError(f"{path} does not exist or is not a file; pass a .gguf file")
    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError/struct errors on a malformed file
        raise GGUFError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); pass a GGUF v2/v3 "
                        f"file written by llama.cpp or the gguf package") from exc


def _fields(reader, path: Path) -> dict[str, Any]:
    out = {}
    for key, fld in reader.fields.items():
        try:
            out[key] = fld.contents()
        except Exception as exc:  # noqa: BLE001 - a malformed value
            raise GGUFError(f"{path}: metadata field {key!r} is unreadable ({exc})") from exc
    return out


def _meta(meta: dict[str, Any], key: str, path: Path, kind: type | tuple[type, ...] = int) -> Any:
    value = meta.get(key)
    if value is None:
        raise GGUFError(f"{path}: the metadata lacks {key!r}, which a llama GGUF file carries; the file is "
                        f"incomplete or was written by a converter morphlm does not know")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise GGUFError(f"{path}: metadata {key}={value!r} has the wrong type (want {kind})")
    return value


def _f32(x: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(f"{float(x):.7g}")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a q/k projection (out, in): per head, the rows of adjacent-pair RoPE
    (pair i, member j at row 2i + j) go back to the rotate-half layout (row j·d/2 + i)."""
    out_dim, in_dim = w.shape
    d = out_dim // n_heads
    return w.reshape(n_heads, d // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _tokenizer_json(meta: dict[str, Any], path: Path, n_vocab: int) -> str:
    """A tokenizer.json (``tokenizers`` format) from the GGUF tokenizer metadata, roles recorded."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from ..data.tokenizer import TokenizerError, infer_roles, with_roles

    kind = meta.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_GGUF_TOKENIZERS:
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r} is not supported; morphlm imports the byte-level "
                        f"BPE tokenizers {list(SUPPORTED_GGUF_TOKENIZERS)} (SentencePiece 'llama' vocabularies are "
                        f"not)")
    tokens = _meta(meta, "tokenizer.ggml.tokens", path, list)
    merges = meta.get("tokenizer.ggml.merges") or []
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(tokens) != n_vocab or len(types) != len(tokens):
        raise GGUFError(f"{path}: {len(tokens)} tokens and {len(types)} token types for an embedding of {n_vocab} "
                        f"rows; the tokenizer metadata does not belong to these weights")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.tokens repeats a token ({len(tokens) - len(vocab)} duplicates); "
                        f"a BPE vocabulary needs distinct tokens")
    pairs = []
    for m in merges:
        a, sep, b = str(m).partition(" ")
        if not sep or not a or not b:
            raise GGUFError(f"{path}: merge {m!r} in tokenizer.ggml.merges is not 'left right'")
        pairs.append((a, b))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_GGUF_PRETOKENIZERS:
        raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r} (the pre-tokenizer) is not supported; morphlm knows "
                        f"{list(SUPPORTED_GGUF_PRETOKENIZERS)}")
    try:
        tk = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise GGUFError(f"{path}: the BPE vocabulary and merges do not form a tokenizer ({exc})") from exc
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, t in enumerate(types) if int(t) == CONTROL_TOKEN_TYPE]
    if control:
        tk.add_special_tokens(control)  # already in the vocabulary: their ids stay
    text = tk.to_str(pretty=True)
    # unk and pad have fields in tokenizer.json; bos/eos are recorded only where their spelling is the
    # conventional one (a causal tokenizer.json has no field for them): the file's eos goes to lineage.json
    roles = {role: tok for role, tok in gguf_special_tokens(meta, path).items()
             if role in ("unk", "pad") or infer_roles(tk).get(role) == tok}
    try:
        return with_roles(text, roles) if roles else text
    except TokenizerError as exc:
        raise GGUFError(f"{path}: {exc}") from exc


def gguf_special_tokens(meta: dict[str, Any], path: Path) -> dict[str, str]:
    """role (bos, eos, unk, pad) -> token string, from the ``tokenizer.ggml.*_token_id`` metadata."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    roles = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is not None:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(tokens):
                raise GGUFError(f"{path}: tokenizer.ggml.{key}={i!r} is not a token id in 0..{len(tokens) - 1}")
            roles[role] = tokens[i]
    return roles


def read_gguf(path: str | Path) -> GGUFModel:
    """Read a llama-architecture GGUF file into native weights, config and tokenizer (nothing is written)."""
    from gguf.quants import dequantize

    path = Path(path)
    reader = _reader(path)
    meta = _fields(reader, path)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise GGUFError(f"{path}: general.architecture={arch!r} is not supported; morphlm imports GGUF files of the "
                        f"architectures {list(SUPPORTED_GGUF_ARCHITECTURES)} (convert others from a Hugging Face "
                        f"folder instead)")
    types: dict[str, int] = {}
    bad = []
    tensors = {}
    for t in reader.tensors:
        tname = t.tensor_type.name
        types[tname] = types.get(tname, 0) + 1
        if tname not in SUPPORTED_GGUF_TYPES:
            bad.append(f"{t.name} ({tname})")
        tensors[t.name] = t
    if bad:
        raise GGUFError(f"{path}: tensor type(s) not supported: {', '.join(bad[:5])}"
                        f"{' ...' if len(bad) > 5 else ''}; morphlm dequantizes {list(SUPPORTED_GGUF_TYPES)} "
                        f"(requantize the model to one of them with llama.cpp's llama-quantize)")
    a = f"{arch}."
    n_layers = _meta(meta, a + "block_count", path)
    d_model = _meta(meta, a + "embedding_length", path)
    n_heads = _meta(meta, a + "attention.head_count", path)
    n_kv = meta.get(a + "attention.head_count_kv", n_heads)
    scaling = meta.get(a + "rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in tensors:
        raise GGUFError(f"{path}: RoPE scaling ({scaling or 'rope_freqs.weight'}) is not supported; morphlm imports "
                        f"llama files with plain rotary positions")
    if d_model % n_heads:
        raise GGUFError(f"{path}: embedding_length {d_model} is not a multiple of head_count {n_heads}")
    rope_dim = meta.get(a + "rope.dimension_count", d_model // n_heads)
    if rope_dim != d_model // n_heads:
        raise GGUFError(f"{path}: rope.dimension_count={rope_dim} rotates part of a head of {d_model // n_heads}; "
                        f"morphlm rotates whole heads")

    def weight(name: str) -> np.ndarray:
        t = tensors.get(name)
        if t is None:
            raise GGUFError(f"{path}: tensor {name!r} is missing; a llama GGUF file of {n_layers} layers has it")
        arr = dequantize(np.asarray(t.data), t.tensor_type)
        return np.array(arr.reshape(tuple(int(d) for d in reversed(t.shape))), dtype=np.float32)  # a writable copy

    emb = weight("token_embd.weight")  # (vocab, d)
    vocab = emb.shape[0]
    tied = "output.weight" not in tensors
    d_ff = _meta(meta, a + "feed_forward_length", path)
    try:
        cfg = ModelConfig(
            name=str(meta.get("general.name") or path.stem)[:80], vocab_size=vocab, d_model=d_model,
            n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_ff=d_ff,
            max_seq_len=_meta(meta, a + "context_length", path), activation="swiglu", norm="rmsnorm",
            norm_placement="pre", norm_eps=_f32(_meta(meta, a + "attention.layer_norm_rms_epsilon", path, float)),
            position="rope", rope_theta=_f32(meta.get(a + "rope.freq_base", 10000.0)), causal=True,
            tie_embeddings=tied, bias=False, head="lm")
    except ConfigError as exc:
        raise GGUFError(f"{path}: the metadata describes no valid model ({exc})") from exc
    tokenizer_json = _tokenizer_json(meta, path, vocab)
    try:
        state = _native_state(weight, emb, tied, n_layers, n_heads, n_kv)
    except ValueError as exc:  # a reshape or concatenation of tensors whose sizes contradict the metadata
        raise GGUFError(f"{path}: tensor shapes do not match the metadata ({exc})") from exc
    out = {k: torch.from_numpy(v) for k, v in state.items()}
    _check_shapes(out, cfg, path)
    template = meta.get("tokenizer.chat_template")
    return GGUFModel(config=cfg, state=out, tokenizer_json=tokenizer_json,
                     chat_template=template if isinstance(template, str) else None, tensor_types=types,
                     name=meta.get("general.name"), eos_token=gguf_special_tokens(meta, path).get("eos"))


def _native_state(weight, emb: np.ndarray, tied: bool, n_layers: int, n_heads: int,
                  n_kv: int) -> dict[str, np.ndarray]:
    """The native state dict (float32 numpy) from ``weight(gguf_name)``, q/k rows back in rotate-half order."""
    state: dict[str, np.ndarray] = {"tok_emb.weight": emb, "final_norm.weight": weight("output_norm.weight")}
    if not tied:
        state["lm_head.weight"] = weight("output.weight")
    for i in range(n_layers):
        p = f"blk.{i}."
        q = _unpermute(weight(p + "attn_q.weight"), n_heads)
        k = _unpermute(weight(p + "attn_k.weight"), n_kv)
        state[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([q, k, weight(p + "attn_v.weight")])
        state[f"blocks.{i}.attn.proj.weight"] = weight(p + "attn_output.weight")
        gate_up = [weight(p + "ffn_gate.weight"), weight(p + "ffn_up.weight")]
        state[f"blocks.{i}.mlp.fc1.weight"] = np.concatenate(gate_up)  # SwiGLU's fc1 holds [gate; up]
        state[f"blocks.{i}.mlp.fc2.weight"] = weight(p + "ffn_down.weight")
        state[f"blocks.{i}.norm1.weight"] = weight(p + "attn_norm.weight")
        state[f"blocks.{i}.norm2.weight"] = weight(p + "ffn_norm.weight")
    return state


def _check_shapes(state: dict[str, torch.Tensor], cfg: ModelConfig, path: Path) -> None:
    """Every tensor has the shape the config gives it (so a file whose metadata lies is refused by name)."""
    d, kv, ff = cfg.d_model, cfg.kv_dim, cfg.d_ff
    want = {"tok_emb.weight": (cfg.vocab_size, d), "final_norm.weight": (d,), "lm_head.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        want.update({f"blocks.{i}.attn.qkv.weight": (d + 2 * kv, d), f"blocks.{i}.attn.proj.weight": (d, d),
                     f"blocks.{i}.mlp.fc1.weight": (2 * ff, d), f"blocks.{i}.mlp.fc2.weight": (d, ff),
                     f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,)})
    wrong = {k: (tuple(v.shape), want[k]) for k, v in state.items() if tuple(v.shape) != want[k]}
    if wrong:
        raise GGUFError(f"{path}: tensor shapes do not match the metadata (found, expected): {wrong}")


def import_gguf(src: str | Path, out: str | Path, notes: list[str] | None = None) -> Path:
    """``morphlm convert FILE.gguf DIR``: read the file (any error before anything is written), then write a
    checkpoint directory with model.safetensors (float32), config.json, tokenizer.json and lineage.json."""
    from ..train import checkpoint as ckpt

    src, out = Path(src), Path(out)
    model = read_gguf(src)
    ckpt.claim_output_dir(out, "convert", inputs=[("source", src)], error=InteropError)
    lineage: dict[str, Any] = {"verb": "convert", "from": "gguf", "source": str(src.resolve()),
                               "gguf_tensor_types": model.tensor_types}
    if model.chat_template is not None:
        lineage["chat_template"] = model.chat_template
    if model.eos_token is not None:
        lineage["eos_token"] = model.eos_token
    ckpt.save_checkpoint(out, model.state, model.config, tokenizer_json=model.tokenizer_json, lineage=lineage)
    if notes is not None:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(model.tensor_types.items()))
        cfg = model.config
        notes.append(f"imported {model.name or src.name}: llama, {cfg.n_layers} layers, d_model {cfg.d_model}, "
                     f"{cfg.n_heads} heads / {cfg.n_kv_heads} kv heads, vocabulary {cfg.vocab_size}, context "
                     f"{cfg.max_seq_len}; tensors {kinds} dequantized to float32")
    return out


# ---------------------------------------------------------------------------------------------- chat prompts
def chat_prompt(template: str | None, user: str, system: str | None = None) -> str:
    """The prompt text of one user turn (and an optional system turn) under a chat ``template`` (Jinja, as
    GGUF's ``tokenizer.chat_template`` and Hugging Face's ``chat_template`` hold it; None: :data:`CHATML_TEMPLATE`),
    ending where the assistant's answer starts. Rendered in Jinja's sandbox."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str):
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template or CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    except TemplateError as exc:
        raise InteropError(f"the chat template failed to render ({exc}); the checkpoint's chat_template (lineage."
                           f"json) is malformed") from exc


_SENTINEL = "\x00morphlm-chat-{}\x00"


def chat_ids(tok, template: str | None, user: str, system: str | None = None) -> list[int]:
    """Token ids of :func:`chat_prompt`: the template's control tokens (``<|im_start|>`` ...) become their ids, the
    user's (and system) text stays plain text, so a prompt cannot inject a control token. (A template that alters
    the message text, so that it cannot be located in the rendering, is encoded whole with control tokens.)"""
    marks = [_SENTINEL.format(i) for i in range(2)]
    rendered = chat_prompt(template, marks[0], marks[1] if system else None)
    if not all(rendered.count(m) == 1 for m in marks[:1 + bool(system)]):
        return tok.encode(chat_prompt(template, user, system), allow_special=True)
    texts = {marks[0]: user, marks[1]: system}
    ids: list[int] = []
    pattern = "(" + "|".join(map(re.escape, marks)) + ")"
    for piece in re.split(pattern, rendered):
        if piece in texts:
            ids += tok.encode(texts[piece])
        elif piece:
            ids += tok.encode(piece, allow_special=True)
    return ids


def chat_texts(run_dir: str | Path, prompt: str, *, n: int = 1, max_new_tokens: int = 100, temperature: float = 0.8,
               top_k: int | None = 50, seed: int = 0, device: str = "auto", system: str | None = None) -> list[str]:
    """``morphlm generate --chat``: the assistant's answers to ``prompt`` as one user turn, under the chat template
    the checkpoint records (a GGUF import keeps the file's) or SmolLM2's ChatML; generation stops at the eos
    token (``<|im_end|>`` for ChatML) and the answers are returned without the prompt and special tokens."""
    from ..model import generate
    from ..train import checkpoint as ckpt
    from ..train.optim import resolve_device

    dev = resolve_device(device)
    model, tok, record = ckpt.open_checkpoint(run_dir, device=dev, need_tokenizer="chat needs the model's tokenizer")
    template = record.lineage.get("chat_template")
    if template is None and tok.token_to_id("<|im_start|>") is None:
        raise InteropError(f"{run_dir} records no chat template and its tokenizer has no <|im_start|> token for the "
                           f"default ChatML one: --chat needs a chat model (e.g. `morphlm convert smollm2 DIR`); "
                           f"drop --chat to continue plain text")
    ids = chat_ids(tok, template, prompt, system)
    if max(ids, default=0) >= model.config.vocab_size:
        raise InteropError(f"{run_dir}: the tokenizer gives ids up to {max(ids)} but the model has "
                           f"{model.config.vocab_size}; the tokenizer does not belong to this model")
    eos_token = record.lineage.get("eos_token")  # a GGUF import records the file's eos (tokenizer.json cannot)
    if eos_token is None and record.lineage.get("chat_template") is None and tok.token_to_id("<|im_end|>") is not None:
        eos_token = "<|im_end|>"  # the ChatML default ends a turn there
    eos = tok.token_to_id(eos_token) if isinstance(eos_token, str) else None
    if eos is None and tok.has_role("eos"):
        eos = tok.eos_id
    x = torch.tensor([ids] * n, dtype=torch.long, device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    y = generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k, generator=g, eos_id=eos)
    answers = []
    for row in y[:, len(ids):].tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos)]
        answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers
