"""How the command line's options are generated and collected (the vocabulary lives in the commands' tables).

- :class:`Verb` (``@app.command(cls=verb(...))``): a command with deprecated spellings kept as hidden aliases
  (each use prints a one-line notice), on/off flags that also take true/false, one "did you mean" for an unknown
  option and, optionally, help text computed when ``--help`` is asked (e.g. the growth registry's methods).
- :func:`with_config`: a ``--config FILE`` of the verb's own settings (a YAML mapping of option names; options on
  the line win).
- :func:`field_options`: every ModelConfig, DataSpec and TrainArgs field as a typed, visible option of
  ``morphlm train`` (name, type, default and help from the dataclass), so click itself rejects a bad value
  (``--warmup-steps 1.5``) and suggests the option a typo meant (``--max-step`` → ``--max-steps``).
- :func:`typed_settings`: ``--set key=value`` and a verb's pass-through ``--field value`` settings, checked by
  the same types and with the same "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Union

import typer
from typer.core import TyperCommand

if typing.TYPE_CHECKING:
    import click

# ---------------------------------------------------------------------------- commands: aliases, --config, help
Alias = Union[str, Callable[[Optional[str]], str]]


def verb(aliases: dict[str, Alias] | None = None, *, extra_help: Callable[[], str] | None = None) -> type:
    """A :class:`Verb` command class with these deprecated ``aliases`` (old flag → new flag, or a function of the
    flag's value giving the new flag) and ``extra_help`` (text appended to --help, computed only when help is
    shown)."""
    return type("Verb", (Verb,), {"aliases": dict(aliases or {}),
                                  "extra_help": staticmethod(extra_help) if extra_help else None})


class Verb(TyperCommand):
    """A command that rewrites deprecated flags (with a notice) and names the one option a typo meant."""

    aliases: dict[str, Alias] = {}
    extra_help: Callable[[], str] | None = None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = _bool_values(rewrite_aliases(args, self.aliases, ctx.command_path), self.params)
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter:
            raise
        except Exception as exc:  # click's NoSuchOption (typer carries its own copy of click): one suggestion
            name = getattr(exc, "option_name", None)
            if name is None or not hasattr(exc, "possibilities"):
                raise
            flags = [f for p in self.params if not getattr(p, "hidden", False)
                     for f in (*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])) if f.startswith("--")]
            close = difflib.get_close_matches(name, flags, n=1)
            exc.message = f"No such option: {name}" + (f"; did you mean {close[0]}?" if close else "")
            exc.possibilities = None
            raise

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        if self.extra_help is not None:
            formatter.write("\n" + self.extra_help() + "\n")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool_values(args: list[str], params) -> list[str]:
    """``--causal false`` / ``--compile=true`` (the older pass-through spelling) → ``--no-causal`` / ``--compile``
    for the on/off flags a command declares."""
    pairs = {}
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "secondary_opts", None):
            for opt in p.opts:
                pairs[opt] = p.secondary_opts[0]
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            out.extend(args[i:])
            break
        name, eq, value = tok.partition("=")
        if name in pairs and not eq and i + 1 < len(args) and args[i + 1].lower() in _TRUE + _FALSE:
            eq, value = "=", args[i + 1]
            i += 1
        if name in pairs and eq:
            if value.lower() not in _TRUE + _FALSE:
                raise typer.BadParameter(f"{name}={value}: use {name} or {pairs[name]} (or true/false)")
            tok = name if value.lower() in _TRUE else pairs[name]
        out.append(tok)
        i += 1
    return out


def rewrite_aliases(args: list[str], aliases: dict[str, Alias], where: str = "morphlm") -> list[str]:
    """``args`` with every deprecated flag spelled as its replacement (``--steps 3`` → ``--max-steps 3``,
    ``--steps=3`` too); one notice on stderr per flag used."""
    out: list[str] = []
    for i, tok in enumerate(args):
        if tok == "--":
            out.extend(args[i:])
            break
        name, eq, value = tok.partition("=")
        target = aliases.get(name)
        if target is None:
            out.append(tok)
            continue
        if callable(target):
            target = target(value if eq else (args[i + 1] if i + 1 < len(args) else None))
        typer.secho(f"note: {where} {name} is deprecated; use {target}", fg="yellow", err=True)
        out.append(target + eq + value)
    return out


def with_config(fn: Callable) -> Callable:
    """Give a command a ``--config FILE`` option: a YAML mapping of the command's own option names to values
    (``max_steps: 100``, ``out: runs/x``) that become its defaults, so options on the line win. Unknown keys
    fail with a suggestion."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter(
        "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--config", is_eager=True, expose_value=False, callback=_load_config,
                             dir_okay=False, help="YAML file of this command's settings, keyed by option name "
                                                  "(e.g. max_steps: 100); options given on the line win.")))

    @functools.wraps(fn)
    def wrapper(*args: Any, config_file: Any = None, **kwargs: Any) -> Any:  # the file was read by the callback
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> None:
    """``--config FILE``: its keys become the defaults of the command's options (checked: unknown keys fail with
    a suggestion), so ``--config`` + flags = the flags over the file."""
    if value is None or ctx.resilient_parsing:
        return
    import yaml

    if not value.is_file():
        raise typer.BadParameter(f"{value} does not exist; pass a YAML file of this command's settings")
    try:
        doc = yaml.safe_load(value.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{value} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{value} must be a mapping of option names to values (max_steps: 100)")
    known: dict[str, str] = {}  # a key may be the option's flag (max-steps, json) or its parameter name
    flags: set[str] = set()  # what a suggestion names
    for p in ctx.command.params:
        if p.expose_value and p.name:
            known[p.name] = p.name
            for opt in getattr(p, "opts", []):
                if opt.startswith("--"):
                    known[opt[2:].replace("-", "_")] = p.name
                    flags.add(opt[2:].replace("-", "_"))
    settings = {}
    for key, val in doc.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise typer.BadParameter(f"{value}: unknown setting {key!r}{_did_you_mean(name, flags)}")
        settings[known[name]] = val
    ctx.default_map = {**(ctx.default_map or {}), **settings}


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""


# ---------------------------------------------------------------------------- dataclass fields as options
@dataclasses.dataclass
class FieldOption:
    """One dataclass field as a command-line option."""

    field: str  # the dataclass field (the key build_spec takes)
    section: str  # model | data | train
    flag: str  # --d-model
    kind: type  # int | float | bool | str
    optional: bool  # None is a valid value
    default: Any  # the dataclass default (shown in help)
    help: str

    @property
    def param_name(self) -> str:
        return self.flag[2:].replace("-", "_")

    def parse(self, value: str, where: str) -> Any:
        """A command-line string as this field's type (None for none/null where the field may be null)."""
        low = value.strip().lower()
        if self.optional and low in ("none", "null"):
            return None
        if self.kind is bool:
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise typer.BadParameter(f"{where}: not a boolean; use true or false")
        if self.kind in (int, float):
            try:
                return self.kind(value)
            except ValueError:
                want = "an integer" if self.kind is int else "a number"
                raise typer.BadParameter(f"{where}: not {want}") from None
        return value


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` → {name: comment} from the class source (the field's help)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, re.M)}


def _kind(hint: Any) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return args[0], True
    return hint, False


# flag names that differ from the field name (the vocabulary), and better help than a field comment gives
_FLAGS = {"out_dir": "--out", "schedule": "--lr-schedule"}
_HELP = {
    "out_dir": "Checkpoint directory to write (and resume from). Default: runs/<preset>-<date>-<time>, printed.",
    "max_steps": "Stop after this many optimizer steps.",
    "resume": "'auto': continue the run in --out if there is one | never.",
    "batch_size": "Global batch, sequences per optimizer step.",
    "seq_len": "Tokens per sequence.",
    "lr": "Peak learning rate.",
    "schedule": "LR schedule after the warmup: cosine | linear | constant.",
    "schedule_steps": "LR schedule horizon (warmup + decay); default --max-steps. Recorded and reused on resume: "
                      "give the final length here to extend a run later without changing its past.",
    "parallel": "none | ddp | fsdp (under torchrun).",
    "expert_parallel": "Expert parallelism under torchrun: shard each MoE layer's experts over groups of N ranks "
                       "(all-to-all token exchange; N divides the experts and the process count; with --parallel "
                       "ddp or fsdp for the rest). 1 = off.",
    "compile": "torch.compile the model.",
    "device": "auto | cpu | cuda.",
    "corpus": "Corpus name (stdlib, shakespeare) or a path/glob/JSONL.",
    "task_train": "Classifier (--head cls): labelled training file (TSV/CSV/JSONL).",
    "task_val": "Classifier (--head cls): labelled validation file.",
    "max_bytes": "Cap on corpus bytes (none = no cap).",
    "eval_batches": "Validation batches per evaluation.",
    "val_fraction": "Share of documents held out for validation.",
    "seed": "Seed of the weights, data order and dropout.",
    "name": "Name recorded in config.json (default: the preset's).",
    "vocab_size": "Vocabulary size (the BPE tokenizer is trained to it).",
    "activation": "gelu | gelu_tanh | relu | swiglu.",
    "norm": "layernorm | rmsnorm.",
    "norm_placement": "pre | post | sandwich | dssn.",
    "position": "learned | rope | none.",
    "head": "lm (causal LM) | mlm (masked LM) | cls (sequence classification).",
    "msg_ramp_steps": "MSG growth masks' ramp length (set by `grow --method msg`; none for a plain model).",
    "d_model": "Hidden size (width of the residual stream).",
    "n_layers": "Number of transformer blocks.",
    "n_heads": "Attention (query) heads; head_dim = d_model / n_heads.",
    "n_kv_heads": "Key/value heads (fewer than n_heads: grouped-query attention).",
    "d_ff": "FFN hidden size (4·d_model for gelu/relu, the 8/3 rule rounded to 64 for swiglu).",
    "max_seq_len": "Longest sequence the model takes (position table size).",
    "norm_eps": "Epsilon of the norms.",
    "rope_theta": "RoPE base frequency.",
    "causal": "Causal attention mask (--no-causal: a bidirectional encoder).",
    "tie_embeddings": "The output head shares the token embedding.",
    "bias": "Biases in the linear layers.",
    "dropout": "Dropout probability.",
    "embed_norm": "LayerNorm right after the embeddings (BERT).",
    "final_norm": "A norm before the output head (default: on unless norm_placement is post).",
    "n_segments": "Token-type (segment) embeddings; BERT uses 2.",
    "n_classes": "Classes of a classifier (--head cls).",
    "init_std": "Standard deviation of the weight initialisation.",
    "micro_batch_size": "Sequences per forward on one rank (gradient accumulation); default the whole batch.",
    "min_lr_ratio": "The LR decays to lr × this ratio at the schedule's end.",
    "warmup_steps": "Linear LR warmup steps.",
    "weight_decay": "AdamW weight decay (matrices and embeddings only).",
    "beta1": "AdamW beta1.",
    "beta2": "AdamW beta2.",
    "adam_eps": "AdamW epsilon.",
    "grad_clip": "Gradient-norm clipping (0 = off).",
    "eval_every": "Evaluate every N steps (0: only at the end).",
    "eval_at_end": "Evaluate after the last step.",
    "save_every": "Save a checkpoint every N steps (0: only at the end).",
    "progress": "Show a progress bar.",
    "tensorboard": "Also log to TensorBoard (OUT/tb; needs the tensorboard package).",
    "flops_per_step": "Override the FLOPs counted per step (default: the FLOPs ruler's).",
}


def field_options() -> list[FieldOption]:
    """Every settable ModelConfig, DataSpec and TrainArgs field as an option (train's generated options)."""
    from ..model.config import DERIVED_FIELDS, ModelConfig
    from ..train.optim import TrainArgs
    from ..train.run import DataSpec

    out: list[FieldOption] = []
    for section, cls in (("model", ModelConfig), ("data", DataSpec), ("train", TrainArgs)):
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            kind, optional = _kind(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            text = _HELP.get(f.name) or comments.get(f.name) or f.name.replace("_", " ").capitalize()
            text = text if text.endswith(".") else text + "."
            if section == "model":
                if f.name in DERIVED_FIELDS:
                    src = ", ".join(DERIVED_FIELDS[f.name])
                    text += f" Default: the preset's, else derived from {src} (again when you change {src})."
                elif f.name != "name":
                    text += " Default: the preset's."
            elif "default" not in text.lower():
                text += f" (default: {_show(default)})"
            out.append(FieldOption(f.name, section, _FLAGS.get(f.name, "--" + f.name.replace("_", "-")),
                                   kind, optional, default, text))
    flags = [o.flag for o in out]
    dupes = {f for f in flags if flags.count(f) > 1}
    assert not dupes, f"two settings share the flag(s) {dupes}"  # a new field must get its own name in _FLAGS
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def with_field_options(options: list[FieldOption]) -> Callable:
    """Give a command function (taking ``**fields``) one typed keyword parameter per field option, visible in
    --help; typer reads the function's ``__signature__``. Unset options arrive as None."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params}
        for o in options:
            if o.param_name in taken:
                raise TypeError(f"{fn.__name__}: option {o.flag} is declared twice")
            decl = f"{o.flag}/--no-{o.flag[2:]}" if o.kind is bool else o.flag
            extra: dict[str, Any] = {}
            if o.optional and o.kind is not bool:  # a nullable field also takes none/null (--max-bytes none)
                extra = dict(parser=functools.partial(_parse_nullable, o), metavar=f"<{o.kind.__name__}|none>")
            params.append(inspect.Parameter(
                o.param_name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[o.kind],
                default=typer.Option(None, decl, help=o.help, show_default=False,
                                     rich_help_panel=f"{o.section.capitalize()} settings", **extra)))
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return deco


NULL = "none"  # an option explicitly set to none/null, as build_spec reads it (an unset option stays None)


def _parse_nullable(option: FieldOption, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = option.parse(value, option.flag)
    except typer.BadParameter as exc:
        raise ValueError(str(exc.message)) from None
    return NULL if parsed is None else parsed


def typed_settings(pairs: dict[str, str], options: list[FieldOption], *, own: list[str] = (),
                   what: str = "setting", null: Any = None) -> dict[str, Any]:
    """Check and type ``{field: string}`` settings (from ``--set`` or pass-through ``--field value``) against the
    field options: an unknown name fails with the closest option (``own``: the command's other flags, so a typo
    of one of them is suggested too), a value of the wrong type fails naming the field. A none/null value of a
    nullable field becomes ``null`` (build_spec takes :data:`NULL`; a config takes None)."""
    by_field = {o.field: o for o in options}
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        name = key.replace("-", "_")
        opt = by_field.get(name) or next((o for o in options if o.param_name == name), None)
        if opt is None:
            candidates = {o.param_name for o in options} | {f.lstrip("-").replace("-", "_") for f in own}
            raise typer.BadParameter(f"unknown {what} --{name.replace('_', '-')}{_did_you_mean(name, candidates)}; "
                                   f"see --help for the settings")
        parsed = opt.parse(value, f"{key}={value!r}")
        out[opt.field] = null if parsed is None else parsed
    return out


def model_options() -> list[FieldOption]:
    """ModelConfig's fields as options (the student/target shape settings of distill, extract, search)."""
    return [o for o in field_options() if o.section == "model"]
