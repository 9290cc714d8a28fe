"""Classification tasks: file formats, column detection, label mapping, deterministic batches."""

import gzip
from collections import Counter

import pytest
import torch

from morphlm.data import ClassificationBatches, Example, TaskError, load_task, load_task_file, train_tokenizer
from morphlm.data.tasks import _truncate_longest_first


@pytest.fixture(scope="module")
def tok():
    text = ["the cat sat on the mat . a dog chased the cat .", "is it raining ? yes , it is raining today ."] * 20
    return train_tokenizer(text, 300)


@pytest.fixture
def pair_files(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tthe cat sat on the mat .\ta cat is sitting .\tentailment\n"
        "1\ta dog chased the cat .\tthe cat chased a dog .\tcontradiction\n"
        "2\tis it raining ?\tthe sun is out .\tneutral\n"
        "3\tit is raining today .\tit rains .\tentailment\n"
    )
    val = tmp_path / "dev.tsv"
    val.write_text("index\tsentence1\tsentence2\tlabel\n0\ta dog .\ta cat .\tcontradiction\n")
    return train, val


# ---- reading ------------------------------------------------------------------------------------


def test_pair_task_tsv(pair_files):
    task = load_task(*pair_files)
    assert task.is_pair and task.n_classes == 3
    assert task.label_names == ["contradiction", "entailment", "neutral"]  # sorted
    assert task.train[0] == Example("the cat sat on the mat .", "a cat is sitting .", 1)
    assert task.val[0].label == 0
    assert [e.label for e in task.train] == [1, 0, 2, 1]


def test_single_text_jsonl_and_csv(tmp_path):
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "good film", "label": 1}\n\n{"text": "bad film", "label": 0}\n')
    assert load_task_file(j) == [Example("good film", None, 1), Example("bad film", None, 0)]
    c = tmp_path / "t.csv.gz"
    c.write_bytes(gzip.compress(b'content,y\n"fine, really ""great""",pos\nawful,neg\n'))
    ex = load_task_file(c)
    assert ex == [Example('fine, really "great"', None, 1), Example("awful", None, 0)]


def test_explicit_fields_and_qnli_layout(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("idx\tquestion\tsentence\tlabel\n0\twhat is it ?\tit is a cat .\tentailment\n")
    ex = load_task_file(p)
    assert ex == [Example("what is it ?", "it is a cat .", 0)]
    p2 = tmp_path / "custom.tsv"
    p2.write_text("review\tstars\n great \t5\nmeh\t1\n")
    assert load_task_file(p2, text_field="review", label_field="stars") == [Example(" great ", None, 5),
                                                                            Example("meh", None, 1)]


def test_reading_errors(tmp_path):
    p = tmp_path / "nolabel.tsv"
    p.write_text("sentence\tscore\nhello\t1\n")
    with pytest.raises(TaskError, match="label_field"):
        load_task_file(p)
    p = tmp_path / "ragged.tsv"
    p.write_text("label\tsentence\n1\tok\n0\ttoo\tmany\n")
    with pytest.raises(TaskError, match="line 3"):
        load_task_file(p)
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(TaskError, match="line 2"):
        load_task_file(p)
    p = tmp_path / "unlabelled.tsv"
    p.write_text("label\tsentence\n-1\tno label\n")
    with pytest.raises(TaskError, match="negative"):
        load_task_file(p)
    p = tmp_path / "x.parquet"
    p.write_text("")
    with pytest.raises(TaskError, match=r"\.tsv"):
        load_task_file(p)
    with pytest.raises(TaskError, match="not found"):
        load_task_file(tmp_path / "missing.tsv")
    with pytest.raises(TaskError, match="no column 'nope'"):
        load_task_file(tmp_path / "ragged.tsv", text_field="nope")


def test_sst2(shared_data):
    folder = shared_data / "glue-sst2"
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"glue-sst2 not in {shared_data} (the data folder is $MORPHLM_DATA)")
    task = load_task(folder / "train.tsv", folder / "dev.tsv")
    assert (len(task.train), len(task.val)) == (67349, 872)
    assert task.n_classes == 2 and task.label_names == ["0", "1"] and not task.is_pair
    assert task.train[0] == Example("hide new secretions from the parental units", None, 0)
    assert task.val[0].text == "one long string of cliches ."
    counts = Counter(e.label for e in task.train)
    assert counts[0] > 20000 and counts[1] > 30000


# ---- batching -----------------------------------------------------------------------------------


def test_truncate_longest_first():
    assert _truncate_longest_first(3, 4, 10) == (3, 4)
    assert _truncate_longest_first(20, 2, 10) == (8, 2)
    assert _truncate_longest_first(2, 20, 10) == (2, 8)
    assert _truncate_longest_first(20, 20, 9) == (5, 4)
    assert _truncate_longest_first(7, 6, 11) == (6, 5)


def test_pair_batches_layout(pair_files, tok):
    task = load_task(*pair_files)
    cb = ClassificationBatches(task.train, task.val, tok, batch_size=4, max_len=64, seed=0)
    b = cb.train_batch(0)
    x, am, tt, y = b["input_ids"], b["attention_mask"], b["token_type_ids"], b["labels"]
    assert x.shape == am.shape == tt.shape and x.shape[0] == 4 and y.shape == (4,)
    assert all(t.dtype == torch.int64 for t in b.values())
    assert sorted(y.tolist()) == sorted(e.label for e in task.train)  # one epoch = the whole train set
    for i in range(4):
        n = int(am[i].sum())
        ids = x[i, :n].tolist()
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and ids.count(tok.sep_id) == 2
        s1 = ids.index(tok.sep_id)
        assert tt[i, : s1 + 1].tolist() == [0] * (s1 + 1) and tt[i, s1 + 1 : n].tolist() == [1] * (n - s1 - 1)
        assert bool((x[i, n:] == tok.pad_id).all()) and bool((tt[i, n:] == 0).all())
        a, bb = tok.decode(ids[1:s1]), tok.decode(ids[s1 + 1 : -1])
        ex = next(e for e in task.train if e.text == a)
        assert ex.text_pair == bb and ex.label == int(y[i])
    assert int(am.sum(dim=1).max()) == x.shape[1]  # padded to the longest in the batch


def test_truncation_and_fixed_padding(pair_files, tok):
    long = Example("the cat sat on the mat . " * 20, "a dog .", 1)
    cb = ClassificationBatches([long], [long], tok, batch_size=2, max_len=16, pad_to_max_len=True)
    b = cb.train_batch(0)
    assert b["input_ids"].shape == (2, 16) and bool((b["attention_mask"] == 1).all())
    ids = b["input_ids"][0].tolist()
    s1 = ids.index(tok.sep_id)
    assert tok.decode(ids[s1 + 1 : -1]) == "a dog ."  # the short part survives whole
    single = ClassificationBatches([Example("word " * 50, None, 0)], [], tok, batch_size=1, max_len=8)
    x = single.train_batch(0)["input_ids"][0].tolist()
    assert len(x) == 8 and x[0] == tok.cls_id and x[-1] == tok.sep_id
    assert single.val_batches() == []
    with pytest.raises(TaskError, match="max_len"):
        ClassificationBatches([long], [], tok, batch_size=1, max_len=4)


def test_train_batches_deterministic_epochs(tok):
    train = [Example(f"example {i}", None, i) for i in range(10)]
    cb = ClassificationBatches(train, train, tok, batch_size=4, max_len=16, seed=7)
    again = ClassificationBatches(train, train, tok, batch_size=4, max_len=16, seed=7)
    labels = [cb.train_batch(s)["labels"].tolist() for s in range(5)]  # 20 positions = exactly 2 epochs
    assert labels == [again.train_batch(s)["labels"].tolist() for s in reversed(range(5))][::-1]
    flat = sum(labels, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch has its own permutation
    other = ClassificationBatches(train, train, tok, batch_size=4, max_len=16, seed=8)
    assert other.train_batch(0)["labels"].tolist() != labels[0]
    assert cb.steps_per_epoch == 3


def test_val_batches_in_order(tok):
    val = [Example(f"v {i}", None, i % 2) for i in range(10)]
    cb = ClassificationBatches(val, val, tok, batch_size=4, max_len=16)
    vb = cb.val_batches()
    assert [b["labels"].shape[0] for b in vb] == [4, 4, 2]
    assert sum((b["labels"].tolist() for b in vb), []) == [i % 2 for i in range(10)]
    assert tok.decode(vb[2]["input_ids"][1][1:-1].tolist()).startswith("v 9")
