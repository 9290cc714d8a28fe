"""General-distillation data of the compression benchmark: UnlabelledBatches rows are well-formed
``[CLS] tokens [SEP]`` windows, pure functions of (seed, step); gd_corpus reads books, WikiText-2 and SST-2's
training sentences (never dev) in a fixed order, with per-source stats, a cap spread in proportion to the
sources' sizes, and a clear error for a missing source folder."""

import gzip

import pytest
import torch

from morphlm.bench.compression_data import UnlabelledBatches, gd_corpus
from morphlm.compress.errors import CompressionError
from morphlm.data import train_tokenizer
from morphlm.data.paths import data_dir

TEXT = ("the quick brown fox jumps over the lazy dog while a good film tells a lovely story about a bright "
        "morning in the old town")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([TEXT] * 40, 300)


def test_unlabelled_rows_are_cls_text_sep_and_pure():
    ids = torch.arange(10, 210)
    data = UnlabelledBatches(ids, 4, 16, seed=3, cls_id=1, sep_id=2)
    b = data.train_batch(5)
    assert b["input_ids"].shape == (4, 16) and bool((b["attention_mask"] == 1).all())
    assert bool((b["input_ids"][:, 0] == 1).all()) and bool((b["input_ids"][:, -1] == 2).all())
    body = b["input_ids"][:, 1:-1]
    assert bool((body[:, 1:] - body[:, :-1] == 1).all())  # 14 consecutive corpus tokens
    again = UnlabelledBatches(ids, 4, 16, seed=3, cls_id=1, sep_id=2)
    assert torch.equal(again.train_batch(5)["input_ids"], b["input_ids"])
    assert not torch.equal(data.train_batch(6)["input_ids"], b["input_ids"])
    assert not torch.equal(UnlabelledBatches(ids, 4, 16, seed=4, cls_id=1, sep_id=2).train_batch(5)["input_ids"],
                           b["input_ids"])
    plain = UnlabelledBatches(ids, 4, 16, seed=3).train_batch(5)["input_ids"]  # an LM teacher: text only
    assert plain.shape == (4, 16) and bool((plain[:, 1:] - plain[:, :-1] == 1).all())
    with pytest.raises(CompressionError, match="give both"):
        UnlabelledBatches(ids, 4, 16, cls_id=1)
    with pytest.raises(CompressionError, match="no room"):
        UnlabelledBatches(ids, 4, 2, cls_id=1, sep_id=2)


def fake_data(root, n_books=2, wiki_articles=3, sst=5):
    (root / "gutenberg").mkdir(parents=True)
    for i in range(n_books):
        body = f"*** START OF THE PROJECT GUTENBERG EBOOK B{i} ***\n" + (TEXT + "\n") * (4 + i) + \
               f"*** END OF THE PROJECT GUTENBERG EBOOK B{i} ***\nlicence text\n"
        (root / "gutenberg" / f"{i}_Book.txt.gz").write_bytes(gzip.compress(body.encode()))
    (root / "gutenberg" / "SOURCE.md").write_text("not a book")
    (root / "wikitext-2").mkdir()
    arts = "".join(f" \n = Title {i} = \n \n the fox @-@ dog had <unk> story {i} . \n \n = = Part = = \n \n "
                   f"the town . \n" for i in range(wiki_articles))
    (root / "wikitext-2" / "valid.txt").write_text(arts)
    (root / "wikitext-2" / "test.txt").write_text(" \n = Last = \n \n a film . \n")
    (root / "glue-sst2").mkdir()
    # the shared copy's column order: label first
    (root / "glue-sst2" / "train.tsv").write_text("label\tsentence\n" + "".join(f"1\tgood film {i}\n"
                                                                                 for i in range(sst)))
    (root / "glue-sst2" / "dev.tsv").write_text("label\tsentence\n0\tDEVONLY sentence\n")
    return root


def test_gd_corpus_stats_order_and_proportional_cap(tok, tmp_path):
    root = fake_data(tmp_path / "d")
    ids, stats = gd_corpus(root, tok)
    assert stats["books"]["documents"] == 2 and stats["wikitext-2"]["documents"] == 4  # 3 valid + 1 test articles
    assert stats["sst2"]["documents"] == 5
    assert ids.dim() == 1 and ids.numel() == sum(s["tokens"] for s in stats.values())
    sep = tok.boundary_id
    assert int((ids == sep).sum()) == 11  # one boundary after each document
    text = tok.decode(ids.tolist())
    assert "licence text" not in text and "SOURCE" not in text and "DEVONLY" not in text
    assert "@-@" not in text and "fox-dog" in text.replace(" - ", "-").replace(" -", "-")
    assert text.index("quick brown") < text.index("Title 0") < text.index("good film 0")  # source order
    assert torch.equal(gd_corpus(root, tok)[0], ids)  # deterministic
    cap = ids.numel() // 3
    capped, cst = gd_corpus(root, tok, max_tokens=cap)
    assert capped.numel() == sum(s["tokens"] for s in cst.values()) <= cap
    for src in stats:  # each source keeps floor(cap * n_s / N) tokens: its share of the whole
        assert cst[src]["tokens"] == cap * stats[src]["tokens"] // ids.numel()
        assert 1 <= cst[src]["documents"] <= stats[src]["documents"]
    assert torch.equal(capped[: cst["books"]["tokens"]], ids[: cst["books"]["tokens"]])  # a prefix, in order
    only, ost = gd_corpus(root, tok, sources=("sst2",))
    assert set(ost) == {"sst2"} and ost["sst2"] == stats["sst2"]


def test_gd_corpus_errors(tok, tmp_path):
    root = fake_data(tmp_path / "d")
    (root / "wikitext-2" / "valid.txt").unlink()
    (root / "wikitext-2" / "test.txt").unlink()
    (root / "wikitext-2").rmdir()
    with pytest.raises(CompressionError, match=r"wikitext-2 source folder .*wikitext-2 does not exist"):
        gd_corpus(root, tok)
    with pytest.raises(CompressionError, match="unknown general-distillation source 'news'"):
        gd_corpus(root, tok, sources=("news",))
    with pytest.raises(CompressionError, match="max_tokens"):
        gd_corpus(root, tok, max_tokens=0, sources=("sst2",))


def test_gd_corpus_on_the_shared_data(tok):
    root = data_dir()
    if not (root / "wikitext-2" / "valid.txt").is_file():
        pytest.skip(f"WikiText-2 is not in {root} (set MORPHLM_DATA to the shared data folder)")
    ids, stats = gd_corpus(root, tok, sources=("wikitext-2",))  # books and SST-2 (67k lines) cost too long here
    # one document per article: its " = Title = " lines, valid 60 + test 62
    assert stats["wikitext-2"]["documents"] == 122
    assert ids.numel() == stats["wikitext-2"]["tokens"] and int((ids == tok.boundary_id).sum()) == 122
