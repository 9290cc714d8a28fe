"""A tiny Hugging Face BERT folder built in the test: a bare ``BertModel`` (no head, like a sentence encoder)
with a WordPiece tokenizer whose special tokens are NOT ids 0..k-1 ([PAD] 0, the rest after the word pieces,
as BERT's [CLS] is 101), saved by transformers itself (tokenizer_config.json declares the roles)."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the film is a charming and often affecting journey",
    "a gorgeous , witty , seductive movie",
    "the story is dull and the acting is worse",
    "an utterly incompetent and boring mess",
    "it is a beautiful and moving picture",
    "nothing in this film works at all",
    "one of the best films of the year",
    "the plot is thin and the jokes fall flat",
] * 3
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(vocab_size: int = 120):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    base = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    base.normalizer = normalizers.BertNormalizer(lowercase=True)
    base.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    base.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"]))
    pieces = sorted((i, t) for t, i in base.get_vocab().items() if t != "[UNK]")
    vocab = {"[PAD]": 0, **{t: k + 1 for k, (_, t) in enumerate(pieces)}}
    for t in SPECIALS:
        vocab[t] = len(vocab)
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.add_special_tokens(["[PAD]", *SPECIALS])
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tk


def bert_folder(path: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """Save a bare BertModel + its WordPiece tokenizer as a Hugging Face folder at ``path``."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tk = wordpiece()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tk.get_vocab_size(), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    return Path(path)


def task_files(folder: Path) -> tuple[Path, Path, Path]:
    """(train.tsv, dev.tsv, corpus.txt) made of :data:`SENTENCES`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{i % 2}\t{s}" for i, s in enumerate(SENTENCES)]
    train, dev, corpus = folder / "train.tsv", folder / "dev.tsv", folder / "corpus.txt"
    train.write_text("label\tsentence\n" + "\n".join(rows) + "\n", encoding="utf-8")
    dev.write_text("label\tsentence\n" + "\n".join(rows[:8]) + "\n", encoding="utf-8")
    docs = [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(6)) for i in range(60)]
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return train, dev, corpus
