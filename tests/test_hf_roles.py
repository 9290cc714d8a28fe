"""Hugging Face encoders and tokenizers as first-class citizens: special tokens by role, a bare BertModel
folder through every verb (convert → eval / train --init / distill --teacher / extract / quantize with QAT →
export), and exports that transformers' AutoTokenizer loads with their special tokens set."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from clihelp import cli
from hf_tiny import SENTENCES, bert_folder, task_files, wordpiece
from morphlm.data import Tokenizer, TokenizerError, train_tokenizer
from morphlm.data.batches import MLMBatches
from morphlm.data.tokenizer import infer_roles, with_roles
from morphlm.data.tokens import prepare_lm_store
from morphlm.interop import InteropError
from morphlm.interop.convert import convert
from morphlm.train import checkpoint as ckpt


# ------------------------------------------------------------------------------------------- roles
def test_our_bpe_roles_are_its_seven_specials():
    tok = train_tokenizer(SENTENCES, 300, min_frequency=1)
    assert tok.roles == {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>",
                         "cls": "<cls>", "sep": "<sep>"}
    assert tok.special_ids == list(range(7)) and tok.boundary_id == tok.eos_id == 3


def test_old_name_checkpoint_keeps_working(tmp_path):
    """A checkpoint written before roles existed holds only the <eos>-style names: roles come from them."""
    from morphlm.model import ModelConfig, TransformerLM

    tok = train_tokenizer(SENTENCES, 300, min_frequency=1)
    cfg = ModelConfig.from_name("tiny", vocab_size=300)
    ckpt.save_checkpoint(tmp_path / "old", TransformerLM(cfg).state_dict(), cfg, tokenizer_json=tok.to_json_str())
    again = ckpt.open_tokenizer(tmp_path / "old")
    assert (again.pad_id, again.eos_id, again.mask_id, again.cls_id, again.sep_id) == (0, 3, 4, 5, 6)
    assert again.fingerprint() == tok.fingerprint()  # the file is not rewritten: caches keyed on it stay valid


def test_wordpiece_roles_from_template_padding_and_unk():
    tk = wordpiece()
    tk.enable_padding(pad_id=0, pad_token="[PAD]", length=128)  # as MiniLM's tokenizer.json has it
    tk.enable_truncation(8)
    tok = Tokenizer(tk)
    vocab = tk.get_vocab()
    assert tok.roles == {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"])
    assert tok.special_ids == sorted(vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    assert tok.boundary_id == tok.sep_id  # no eos: documents are separated by [SEP]
    long = " ".join(SENTENCES[:3])
    assert len(tok.encode(long)) > 8 and tok.encode("the film")[-1] != tok.pad_id  # no truncation, no padding
    assert json.loads(tok.to_json_str())["padding"]["pad_token"] == "[PAD]"  # the file text keeps them
    with pytest.raises(TokenizerError, match=r"no end of sequence \(eos\) token"):
        tok.eos_id


def test_with_roles_records_unconventional_names_in_tokenizer_json():
    from tokenizers import Tokenizer as HFTok, models, pre_tokenizers

    vocab = {"<<P>>": 0, "a": 1, "b": 2, "<<?>>": 3, "<<begin>>": 4, "<<end>>": 5, "<<hole>>": 6}
    tk = HFTok(models.WordLevel(vocab, unk_token="<<?>>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    roles = {"pad": "<<P>>", "unk": "<<?>>", "cls": "<<begin>>", "sep": "<<end>>"}
    assert infer_roles(tk) == {"unk": "<<?>>"}
    text = with_roles(tk.to_str(), roles)
    tok = Tokenizer.from_json_str(text)
    assert tok.roles == roles and (tok.pad_id, tok.cls_id, tok.sep_id) == (0, 4, 5)
    with pytest.raises(TokenizerError, match="no field to record these roles"):
        with_roles(tk.to_str(), {**roles, "mask": "<<hole>>"})  # mask has no field and no conventional name


def test_mlm_batches_never_mask_or_draw_specials_past_the_first_ids(tmp_path):
    tok = Tokenizer(wordpiece())
    _, store = prepare_lm_store(str(task_files(tmp_path)[2]), tok.vocab_size, tokenizer=tok,
                                cache_dir=tmp_path / "cache", show_progress=False)
    data = MLMBatches(store, 8, 32, mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=tok.special_ids)
    special = torch.tensor(tok.special_ids)
    for step in range(5):
        b = data.train_batch(step)
        chosen = b["labels"] != -100
        assert chosen.any() and not torch.isin(b["labels"][chosen], special).any()  # specials are never chosen
        replaced = chosen & (b["input_ids"] != b["labels"]) & (b["input_ids"] != tok.mask_id)
        assert not torch.isin(b["input_ids"][replaced], special).any()  # nor drawn as random tokens


# ------------------------------------------------------------------------------------------- the workflow
@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A bare BertModel folder taken through convert → train --init (cls) → distill --teacher → quantize."""
    root = tmp_path_factory.mktemp("hf_roles")
    hf = bert_folder(root / "hf")
    train, dev, corpus = task_files(root / "data")
    task = ["--task-train", train, "--task-val", dev]
    res = cli("convert", hf, root / "m")
    assert "encoder-only BertModel" in res.output and "fresh masked-LM head" in res.output
    cli("train", "--init", root / "m", "--head", "cls", "--n-classes", 2, *task, "--max-steps", 4,
        "--batch-size", 4, "--seq-len", 32, "--out", root / "ft")
    cli("distill", "--teacher", root / "ft", "--to", "teacher", "--n-layers", 1, "--stage", "task", *task,
        "--max-steps", 3, "--batch-size", 4, "--seq-len", 32, "--out", root / "st")
    cli("quantize", root / "st", "--method", "ternary", "--max-steps", 3, "--act-bits", 0, *task,
        "--out", root / "q")
    return root, hf, corpus


def test_converted_bert_model_evaluates_mlm_loss_on_a_corpus(flow):
    root, _, corpus = flow
    res = cli("eval", root / "m", "--corpus", corpus, "--json")
    metrics = json.loads(res.output.strip().splitlines()[-1])
    assert 0 < metrics["val_loss"] < 20


def test_converted_classifier_fine_tunes_distills_and_extracts(flow):
    root, _, _ = flow
    ft = ckpt.read_config(root / "ft")[0]
    assert ft.head == "cls" and ft.n_layers == 2 and ft.d_model == 32  # --init took the checkpoint's config
    assert ckpt.read_config(root / "st")[0].n_layers == 1
    cli("extract", root / "ft", "--n-layers", 1, "--out", root / "ex")
    assert ckpt.open_tokenizer(root / "ex").cls_id == ckpt.open_tokenizer(root / "ft").cls_id


def _modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_ternary_student_exports_and_transformers_reproduces_its_logits(flow):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    root, _, _ = flow
    cli("convert", root / "q", root / "qhf")
    assert set(_modes(root / "qhf").values()) == {0o644}
    tok = AutoTokenizer.from_pretrained(root / "qhf")
    assert (tok.pad_token, tok.cls_token, tok.sep_token, tok.mask_token, tok.unk_token) == \
        ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
    batch = tok(["the film is dull", "a gorgeous , witty movie , one of the best films"], padding=True,
                return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the batch was padded
    config = json.loads((root / "qhf" / "config.json").read_text())
    ours = ckpt.open_tokenizer(root / "q")
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"]) == \
        (ours.pad_id, ours.cls_id, ours.sep_id)
    model, _, _ = ckpt.open_checkpoint(root / "q")
    with torch.no_grad():
        want = model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = AutoModelForSequenceClassification.from_pretrained(root / "qhf").eval()(**batch).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert AutoModel.from_pretrained(root / "qhf") is not None


def test_fresh_mlm_head_round_trips_through_transformers(flow):
    from transformers import AutoTokenizer, BertForMaskedLM

    root, _, _ = flow
    res = cli("convert", root / "m", root / "mhf")
    assert "wrote hf" in res.output
    tok = AutoTokenizer.from_pretrained(root / "mhf")
    batch = tok(["the story is dull", "nothing works"], padding=True, return_tensors="pt")
    model, _, _ = ckpt.open_checkpoint(root / "m")
    with torch.no_grad():
        want = model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = BertForMaskedLM.from_pretrained(root / "mhf").eval()(**batch).logits
    real = batch["attention_mask"].bool()  # padded positions hold no prediction either side computes alike
    assert (batch["attention_mask"] == 0).any() and torch.allclose(got[real], want[real], atol=1e-4)


def test_cls_head_keeps_the_pooler_and_bad_heads_are_refused(flow, tmp_path):
    from safetensors.torch import load_file

    _, hf, _ = flow
    kind, notes = convert(hf, tmp_path / "c", head="cls", n_classes=3)
    assert kind == "morphlm" and "3-class classification" in notes[0] and "classifier.weight" in notes[0]
    model, _, _ = ckpt.open_checkpoint(tmp_path / "c")
    pooler = load_file(str(hf / "model.safetensors"))["pooler.dense.weight"]
    assert torch.equal(model.state_dict()["pooler.weight"], pooler) and model.config.n_classes == 3
    with pytest.raises(InteropError, match="cannot be added to BertModel"):
        convert(hf, tmp_path / "d", head="lm")
    with pytest.raises(InteropError, match="applies when converting a Hugging Face folder"):
        convert(tmp_path / "c", tmp_path / "e", head="mlm")


def test_export_refuses_quantized_activations(flow, tmp_path):
    root, _, _ = flow
    cli("quantize", root / "st", "--method", "ternary", "--out", tmp_path / "q8")  # act_bits 8 by default
    with pytest.raises(InteropError, match="--act-bits 0"):
        convert(tmp_path / "q8", tmp_path / "q8hf")


def test_causal_export_has_bos_eos_pad(tmp_path):
    from transformers import AutoTokenizer

    from morphlm.interop import export_hf_model
    from morphlm.model import ModelConfig, TransformerLM

    tok = train_tokenizer(SENTENCES, 300, min_frequency=1)
    model = TransformerLM(ModelConfig.from_name("tiny", vocab_size=300, position="learned", norm="layernorm",
                                                activation="gelu", n_kv_heads=4, n_heads=4))
    export_hf_model(model, tmp_path / "gpt", tokenizer_json=tok.to_json_str())
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "gpt")
    assert (hf_tok.eos_token, hf_tok.bos_token, hf_tok.pad_token) == ("<eos>", "<bos>", "<pad>")
    assert hf_tok(["a b", "the film is"], padding=True)["input_ids"][0][-1] == 0
    config = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 3, 0)


def test_llama_style_template_gives_bos_and_roberta_style_gives_cls_sep():
    from tokenizers import Tokenizer as HFTok, models, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}
    tk = HFTok(models.WordLevel(vocab, unk_token="<unk>"))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert Tokenizer(tk).roles == {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 1))
    assert Tokenizer(tk).roles == {"cls": "<s>", "sep": "</s>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def test_convert_records_the_roles_a_folder_declares(flow, tmp_path):
    import shutil

    _, hf, _ = flow
    shutil.copytree(hf, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "[UNK]"}))
    convert(tmp_path / "hf", tmp_path / "m")
    tok = ckpt.open_tokenizer(tmp_path / "m")
    assert tok.roles["pad"] == "[UNK]" and tok.pad_id == tok.unk_id  # read back from tokenizer.json's padding
    assert (hf / "tokenizer.json").read_text() != (tmp_path / "m" / "tokenizer.json").read_text()
    assert convert(hf, tmp_path / "same")[0] == "morphlm"  # declared == inferred: the file is kept verbatim
    assert (hf / "tokenizer.json").read_text() == (tmp_path / "same" / "tokenizer.json").read_text()


def test_distill_from_a_bare_hf_encoder_folder(flow):
    root, hf, corpus = flow
    cli("distill", "--teacher", hf, "--to", "teacher", "--n-layers", 1, "--stage", "general", "--corpus", corpus,
        "--max-steps", 2, "--batch-size", 4, "--seq-len", 32, "--out", root / "gd")
    assert ckpt.open_tokenizer(root / "gd").mask_id == ckpt.open_tokenizer(root / "m").mask_id
