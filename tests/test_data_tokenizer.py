"""Byte-level BPE tokenizer: round trips, special ids, persistence, determinism, errors."""

import json

import pytest

from morphlm.data import SPECIAL_TOKENS, Tokenizer, TokenizerError, load_corpus, train_tokenizer

TRICKY = [
    "",
    "plain ascii text",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\rcarriage returns\n\n",
    "héllo wörld — “quotes” ‘single’ …",
    "emoji 😀🚀👩‍👩‍👧‍👦 flags 🇫🇷 and skin tones 👍🏽",
    "日本語のテキスト, 中文, 한국어, العربية, עברית, हिन्दी",
    "control \x00\x01\x7f and zero-width \u200b\u200d joiners",
    "literal specials <pad><unk><bos><eos><mask><cls><sep> stay text",
    "def f(x):\n    return {'a': [1, 2.5e-3]}  # code\n",
]


@pytest.fixture(scope="module")
def corpus_texts():
    docs = load_corpus("stdlib", max_bytes=200_000)
    return [d.text for d in docs] + TRICKY * 3


@pytest.fixture(scope="module")
def tok(corpus_texts):
    return train_tokenizer(corpus_texts, 400)


def test_special_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == tuple(range(7))
    assert tok.vocab_size == 400 == len(tok)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_unseen_bytes_are_encodable(tok):
    text = "".join(chr(c) for c in range(0x2500, 0x2600)) + "\U0001f9ec\U0001fae0"  # not in the training text
    assert tok.decode(tok.encode(text)) == text


def test_encode_adds_no_specials_and_literals_stay_text(tok):
    ids = tok.encode("hello world")
    assert not set(ids) & set(range(7))
    ids = tok.encode("a<eos>b")
    assert tok.eos_id not in ids and tok.decode(ids) == "a<eos>b"
    ids = tok.encode("a<eos>b<mask>", allow_special=True)
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.mask_id
    assert tok.decode(ids) == "a<eos>b<mask>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]


def test_compresses_common_text(tok):
    text = "def __init__(self):\n        return None\n"
    assert len(tok.encode(text)) < len(text.encode()) * 0.7


def test_decode_accepts_arrays_and_rejects_bad_ids(tok):
    import numpy as np
    import torch

    ids = tok.encode("array input")
    assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == "array input"
    with pytest.raises(TokenizerError, match="cannot decode id"):
        tok.decode([tok.vocab_size + 5])


def test_save_load_round_trip(tok, tmp_path):
    p = tok.save(tmp_path / "sub" / "tokenizer.json")
    assert p.is_file() and not list(p.parent.glob("*.tmp"))
    again = Tokenizer.load(p)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode("héllo <eos> 😀") == tok.encode("héllo <eos> 😀")
    assert Tokenizer.load(tmp_path / "sub").fingerprint() == tok.fingerprint()  # a directory works too
    assert Tokenizer.from_json_str(tok.to_json_str()).fingerprint() == tok.fingerprint()
    json.loads(p.read_text())  # plain JSON, readable by other tools


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerError, match="corrupt") as e:
        Tokenizer.load(bad)
    assert "retrain" in str(e.value)


def test_training_is_deterministic(corpus_texts, tok):
    again = train_tokenizer(corpus_texts, 400)
    assert again.fingerprint() == tok.fingerprint()
    other = train_tokenizer(corpus_texts, 420)
    assert other.fingerprint() != tok.fingerprint()


def test_vocab_too_small():
    with pytest.raises(TokenizerError, match=r">= 263"):
        train_tokenizer(["abc"], 200)


def test_tiny_corpus_still_has_bytes_and_specials():
    t = train_tokenizer(["a b"], 300)
    assert 263 <= t.vocab_size <= 300
    assert t.decode(t.encode("zzz ✓")) == "zzz ✓"
