import gzip
import json

import pytest

from mergedistill import corpus
from mergedistill.corpus_build import parse_page, split_of, subsample, write_jsonl_gz
from mergedistill.errors import UserError


def test_split_is_a_pure_function_of_the_id():
    ids = [f"scalc/01/page{i}.html#par_id{i}" for i in range(4000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "valid", "test")}
    assert 0.86 < share["train"] < 0.94 and 0.03 < share["valid"] < 0.07 and 0.03 < share["test"] < 0.07


def test_embedded_corpus_has_aligned_languages_and_labels():
    langs = corpus.languages()
    assert {"en", "de", "ru", "ja", "fr", "es", "zh"} <= set(langs)
    en = corpus.load_split("en", "train")
    de = corpus.load_split("de", "train")
    assert set(en.column_names) == {"id", "module", "text"}
    assert len(en) >= 3000 and len(de) >= 3000
    shared = set(en["id"]) & set(de["id"])
    assert len(shared) > 0.8 * len(de)  # German paragraphs align with English ones
    assert {"scalc", "swriter", "sbasic"} <= set(en["module"])
    for split in ("valid", "test"):  # every stored row sits in the split its id hashes to
        rows = corpus.load_split("ja", split)
        assert all(split_of(i) == split for i in rows["id"])


def test_translated_rows_differ_from_english():
    en = dict(zip(*(corpus.load_split("en", "valid")[c] for c in ("id", "text"))))
    ru = corpus.load_split("ru", "valid")
    assert all(en.get(i) != t for i, t in zip(ru["id"], ru["text"]))


def test_parse_page_reads_aligned_paragraphs_only():
    page = """<html><body><header><p id="par_id1">menu</p></header><div id="DisplayArea">
    <h1 id="hd_id1">Title &amp; more</h1><p id="par_id2" class="paragraph">Some <span>bold</span>
    text.</p><p id="bm_x">skip</p><div class="embedded"><p id="par_id3">Inside</p></div></div>
    <footer><p id="par_id9">footer</p></footer></body></html>"""
    assert parse_page(page) == [("hd_id1", "Title & more"), ("par_id2", "Some bold text."), ("par_id3", "Inside")]


def test_subsample_keeps_the_same_ids_in_every_language():
    rows_en = [{"id": f"p{i}", "text": "x"} for i in range(100)]
    rows_de = [r for r in rows_en if int(r["id"][1:]) % 2 == 0]
    kept_en = {r["id"] for r in subsample(rows_en, 30)}
    kept_de = {r["id"] for r in subsample(rows_de, 15)}
    assert len(kept_en) == 30 and len(kept_de) == 15
    assert len(kept_de & kept_en) >= 5  # ranking by the same hash keeps overlapping ids


def test_jsonl_gz_is_byte_deterministic(tmp_path):
    rows = [{"id": "a", "module": "m", "text": "Zürich 東京"}]
    write_jsonl_gz(tmp_path / "a.gz", rows)
    write_jsonl_gz(tmp_path / "b.gz", rows)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert json.loads(gzip.decompress((tmp_path / "a.gz").read_bytes())) == rows[0]


def test_user_text_and_jsonl_corpora(tmp_path):
    text = tmp_path / "ko.txt"
    text.write_text("\n".join(f"문장 번호 {i}" for i in range(200)) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "it.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"frase {i}"}) for i in range(200)), encoding="utf-8")
    sources = {"ko": {"path": str(text)}, "it": {"path": str(jsonl), "text_field": "body"}}
    train = corpus.load_split("ko", "train", sources=sources)
    test = corpus.load_split("ko", "test", sources=sources)
    assert len(train) + len(test) + len(corpus.load_split("ko", "valid", sources=sources)) == 200  # blank line dropped
    assert set(train["id"]).isdisjoint(test["id"]) and train[0]["module"] == ""
    assert corpus.load_split("it", "train", sources=sources)[0]["text"].startswith("frase")


def test_corpus_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not in the corpus"):
        corpus.load_split("xx", "train")
    with pytest.raises(UserError, match="unknown split"):
        corpus.load_split("en", "dev")
    with pytest.raises(UserError, match="manifest.json missing"):
        corpus.load_split("en", "train", tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok line\n\xff\xfe broken\n")
    with pytest.raises(UserError, match="not UTF-8"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(bad)}})
    with pytest.raises(UserError, match="no file matches"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(tmp_path / "none*.txt")}})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no train paragraphs"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(empty)}})


def test_stats_cli(capsys):
    from mergedistill.cli import main

    assert main(["corpus", "stats"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["lang", "train", "par", "valid"]
    assert any(line.startswith("ja ") for line in out.splitlines())
