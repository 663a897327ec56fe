import gzip
import json

import pytest

from mergedistill import corpus
from mergedistill.corpus_build import parse_page, split_of, subsample, write_corpus, write_jsonl_gz
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
    text.</p><p id="bm_x">skip</p><div class="embedded"><p id="par_id3">Inside</p></div>
    <h2 id="hd_2016">Old-style id</h2><p id="N0091">Basic page id</p></div>
    <footer><p id="par_id9">footer</p></footer></body></html>"""
    assert parse_page(page) == [
        ("hd_id1", "Title & more"),
        ("par_id2", "Some bold text."),
        ("par_id3", "Inside"),
        ("hd_2016", "Old-style id"),
        ("N0091", "Basic page id"),
    ]


def test_parse_page_keeps_one_case_of_an_inline_switch():
    page = """<div id="DisplayArea"><p id="par_id1">Choose <span id="sw1" class="switchinline">
    <span hidden="true" id="MACtext1" class="MAC"><span class="emph">Preferences</span></span>
    <span hidden="true" id="defaulttext1"><span class="emph">Tools - Options</span></span></span> now.</p>
    <p id="par_id2">Only <span class="switchinline"><span hidden="true" id="UNIXtext2">X11</span></span> here.</p></div>"""
    assert parse_page(page) == [("par_id1", "Choose Tools - Options now."), ("par_id2", "Only X11 here.")]


def test_subsample_keeps_the_same_ids_in_every_language():
    rows_en = [{"id": f"p{i}", "text": "x"} for i in range(100)]
    rows_de = [r for r in rows_en if int(r["id"][1:]) % 2 == 0]
    kept = subsample({"en": rows_en, "de": rows_de}, 30)
    kept_en, kept_de = ({r["id"] for r in kept[lang]} for lang in ("en", "de"))
    assert len(kept_en) == 30 and len(kept_de) == 30
    assert kept_en == kept_de  # ids present in both languages rank first
    assert subsample({"en": rows_en}, None)["en"] is rows_en


def _records():
    texts = {"en": "Paragraph {i} in English.", "de": "Absatz {i} auf Deutsch."}
    return {
        lang: [
            {
                "id": f"scalc/01/p.html#par_id{i:04d}",
                "module": "scalc" if i % 3 else "swriter",
                "text": text.format(i=i),
            }
            for i in range(300 if lang == "en" else 200)
        ]
        for lang, text in texts.items()
    }


def test_write_corpus_is_deterministic_aligned_and_licensed(tmp_path):
    packages = {"en": "libreoffice-help-en-us=1:1", "de": "libreoffice-help-de=1:1"}
    manifest = write_corpus(tmp_path / "a", _records(), packages)
    write_corpus(tmp_path / "b", _records(), packages)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(f) for f in files][:2] == ["LICENSE-CORPUS.md", "de/test.jsonl.gz"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert "MPL-2.0" in (tmp_path / "a" / "LICENSE-CORPUS.md").read_text() and manifest["packages"] == packages
    assert sum(manifest["splits"]["en"].values()) == 300
    split_of_id = {}
    for lang in ("en", "de"):
        for split in ("train", "valid", "test"):
            for row in corpus.load_split(lang, split, tmp_path / "a") if manifest["splits"][lang][split] else []:
                assert split_of_id.setdefault(row["id"], split) == split  # same id, same split, every language
    table = corpus.format_stats(corpus.stats(tmp_path / "a"))
    assert table.splitlines()[1].startswith("de ") and "swriter" in table.splitlines()[0]


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
    packed = tmp_path / "pt.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.writelines(
            json.dumps({"text": f"frase {i}", "id": f"doc{i}", "module": "news"}) + "\n" for i in range(100)
        )
    pt = corpus.load_split("pt", "train", sources={"pt": {"path": str(packed)}})
    assert pt[0]["module"] == "news" and all(split_of(i) == "train" for i in pt["id"])


def test_hub_source_arguments_reach_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split, kwargs))
        return datasets.Dataset.from_dict({"content": [f"line {i}" for i in range(50)]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = {
        "hub": "someone/wiki",
        "config": "20231101.sw",
        "split": "train",
        "text_field": "content",
        "revision": "main",
    }
    rows = corpus.load_split("sw", "train", sources={"sw": source})
    assert calls == [("someone/wiki", "20231101.sw", "train", {"revision": "main"})]
    assert rows[0]["id"].startswith("sw:") and rows.column_names == ["id", "module", "text"]


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
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(UserError, match="broken.jsonl:2: not valid JSON Lines"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(broken)}})
    with pytest.raises(UserError, match="both JSON Lines and text"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(tmp_path / "b*")}})
    fields = tmp_path / "fields.jsonl"
    fields.write_text('{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="text_field: column 'body' not found"):
        corpus.load_split("ko", "train", sources={"ko": {"path": str(fields), "text_field": "body"}})
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


def test_documents_split_into_capped_paragraphs():
    text = "First  paragraph line.\nSecond line.\n\n\n  Third,\tafter a blank line.  \n"
    assert corpus.paragraphs_of(text, 0) == ["First paragraph line.", "Second line.", "Third, after a blank line."]
    long = " ".join(f"w{i:03d}" for i in range(100))  # 100 words of 4 characters: 499 characters
    pieces = corpus.paragraphs_of(long, 50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == long  # cut at spaces, nothing lost
    assert len(pieces) == 10 and pieces[0] == " ".join(f"w{i:03d}" for i in range(10))
    assert corpus.paragraphs_of("x" * 120, 50) == ["x" * 50, "x" * 50, "x" * 20]  # one word over the cap
    assert corpus.paragraphs_of(long, 0) == [long] and corpus.paragraphs_of(" \n\n", 50) == []


def test_user_documents_become_paragraphs_and_a_jsonl_source_can_stream(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # no Arrow rows from an earlier run
    docs = tmp_path / "docs.jsonl"
    articles = [f"Title {i}\n\nFirst paragraph of {i}.\nSecond paragraph of {i}, " + "long " * 30 for i in range(300)]
    docs.write_text("\n".join(json.dumps({"id": f"art{i}", "text": a}) for i, a in enumerate(articles)) + "\n")
    plain = corpus.load_split("eo", "train", sources={"eo": {"path": str(docs)}}, max_paragraph_chars=100)
    train_docs = [i for i in range(300) if split_of(f"art{i}") == "train"]  # a document stays in one split
    assert len(plain) == 4 * len(train_docs) and max(len(t) for t in plain["text"]) <= 100
    assert plain[0]["id"] == f"art{train_docs[0]}#0" and plain[0]["text"] == f"Title {train_docs[0]}"
    streamed = {"path": str(docs), "streaming": True}
    same = corpus.load_split("eo", "train", sources={"eo": streamed}, max_paragraph_chars=100)
    assert same["id"] == plain["id"] and same["text"] == plain["text"]
    capped = corpus.load_split(
        "eo", "train", sources={"eo": {**streamed, "max_documents": 50}}, max_paragraph_chars=100
    )
    assert capped["id"] == [i for i in plain["id"] if int(i.split("#")[0][3:]) < 50]
    with pytest.raises(UserError, match="max_documents"):
        corpus.load_split("eo", "train", sources={"eo": {**streamed, "max_documents": 0}})


def test_a_hub_source_streams_its_first_documents_into_arrow(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    calls, read = [], []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split, kwargs))

        def documents():  # a stream: only what is read is fetched
            for i in range(10_000):
                read.append(i)
                yield {"id": f"a{i}", "content": f"Heading {i}\n\nBody of article {i}."}

        return documents()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = {"hub": "someone/wiki", "config": "sw", "text_field": "content", "streaming": True, "max_documents": 200}
    rows = corpus.load_split("sw", "train", sources={"sw": source})
    assert calls == [("someone/wiki", "sw", "train", {"streaming": True})]
    assert len(read) <= 201  # the stream is read up to the cap, not to its end
    kept = [i for i in range(200) if split_of(f"a{i}") == "train"]
    assert rows["id"] == [f"a{i}#{n}" for i in kept for n in (0, 1)]
    assert rows["text"][:2] == [f"Heading {kept[0]}", f"Body of article {kept[0]}."]


def test_a_user_corpus_is_split_into_paragraphs_once_per_setting(tmp_path):
    """A stage that loads a corpus loaded before reuses its paragraphs (the map's fingerprint is ours: datasets'
    hash of the split function failed and a random one made every load split the corpus again, into a new file)."""
    text = tmp_path / "ko.txt"
    text.write_text("\n".join(f"문장 번호 {i} " * (1 + i % 9) for i in range(300)) + "\n", encoding="utf-8")
    sources = {"ko": {"path": str(text)}}
    first = corpus.load_split("ko", "train", sources=sources, max_paragraph_chars=40)
    again = corpus.load_split("ko", "train", sources=sources, max_paragraph_chars=40)
    assert again.cache_files == first.cache_files and again["text"] == first["text"]
    other = corpus.load_split("ko", "train", sources=sources, max_paragraph_chars=0)  # another setting: another split
    assert other.cache_files != first.cache_files and len(other) < len(first)
    assert corpus.load_split("ko", "valid", sources=sources).cache_files != first.cache_files
