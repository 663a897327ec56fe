"""The corpus layer: per-language paragraphs with aligned ids and topic labels, through HF ``datasets``.

The embedded corpus lives in ``data/corpus/<lang>/{train,valid,test}.jsonl.gz`` (records ``id``,
``module``, ``text``; see ``corpus_build``). Users may instead point a language at their own files
(plain text: one paragraph per line; JSONL: a ``text_field``) or, with internet, at a hub dataset.
User files get ids ``<lang>:<line>`` and the same id-hash split rule as the embedded corpus.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from mergedistill import mapped_pages
from mergedistill.corpus_build import SPLITS, split_of
from mergedistill.errors import UserError

EMBEDDED_CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"
COLUMNS = ("id", "module", "text")


def _offline() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()  # many small loads; a bar each would drown the output
    mapped_pages.release_datasets_opens()  # opening an Arrow file maps most of it otherwise (``mapped_pages``)


def resolve_dir(corpus_dir: str | Path | None = None) -> Path:
    """The corpus directory to read (``None``/empty: the embedded one), checked to hold a manifest."""
    directory = Path(corpus_dir) if corpus_dir else EMBEDDED_CORPUS_DIR
    if not (directory / "manifest.json").is_file():
        raise UserError(
            f"{directory}: no corpus here (manifest.json missing); set corpus.dir or rebuild with `mergedistill corpus build`"
        )
    return directory


corpus_dir = resolve_dir  # the older name (zoo.corpus_fingerprint imports it)


def languages(corpus_dir: str | Path | None = None) -> list[str]:
    return sorted(json.loads((resolve_dir(corpus_dir) / "manifest.json").read_text(encoding="utf-8"))["splits"])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _load_embedded(lang: str, split: str, directory: Path):
    from datasets import load_dataset

    path = directory / lang / f"{split}.jsonl.gz"
    if not path.is_file():
        known = ", ".join(languages(directory))
        raise UserError(
            f"{path}: language {lang!r} is not in the corpus (has: {known}); add a corpus.sources entry for it"
        )
    return load_dataset("json", data_files=str(path), split="train")


JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
MAX_LINE_CHARS = 100_000  # a longer line in a one-paragraph-per-line text file means its line breaks are missing


def _open_text(file: str):
    return gzip.open(file, "rt", encoding="utf-8") if file.endswith(".gz") else open(file, encoding="utf-8")


def _user_files(lang: str, pattern: str) -> list[str]:
    """The files matching a user's ``path`` glob, checked to be UTF-8 and all of one kind (JSONL or text)."""
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise UserError(f"corpus.sources.{lang}.path: no file matches {pattern!r}")
    if len({f.endswith(JSON_SUFFIXES) for f in files}) > 1:
        raise UserError(
            f"corpus.sources.{lang}.path: {pattern!r} matches both JSON Lines and text files; use one kind per language"
        )
    for file in files:
        try:
            with _open_text(file) as handle:
                for number, line in enumerate(handle, 1):
                    if len(line) > MAX_LINE_CHARS and not file.endswith(JSON_SUFFIXES):
                        raise UserError(
                            f"{file}:{number}: a line of {len(line):,} characters (limit {MAX_LINE_CHARS:,}); "
                            "a text corpus holds one paragraph per line, so break the text into paragraphs"
                        )
        except UnicodeDecodeError:
            raise UserError(f"{_first_non_utf8(file)}: not UTF-8; convert it, e.g. `iconv -t UTF-8`") from None
    return files


def _first_non_utf8(file: str) -> str:
    """``file:line (byte n of the line)`` of the first bytes that are not UTF-8 (the decoder's offset is per chunk)."""
    with gzip.open(file, "rb") if file.endswith(".gz") else open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"{file}:{number} (byte {err.start + 1} of the line)"
    return file


def _first_bad_json_line(files: list[str]) -> str:
    for file in files:
        with _open_text(file) as handle:
            for line_no, line in enumerate(handle, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except ValueError:
                    return f"{file}:{line_no}"
    return ", ".join(files)


def _load_user_jsonl(files: list[str]):
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        return load_dataset("json", data_files=files, split="train")
    except DatasetGenerationError:
        where = _first_bad_json_line(files)
        raise UserError(f"{where}: not valid JSON Lines; write one JSON object per line") from None


def _load_user_text(files: list[str], text_field: str):
    """Plain text, one paragraph per line (blank lines are dropped later, after ids are given), written to an
    Arrow file line by line (keyed by the files' content) and memory-mapped."""
    from mergedistill import io

    def lines():
        for file in files:
            with _open_text(file) as handle:
                yield from (line.rstrip("\n") for line in handle)

    key = io.fingerprint("text-lines", text_field, [(f, io.file_fingerprint(f)) for f in files])
    return _arrow_rows(key, ({text_field: line} for line in lines()), [text_field])


def _arrow_rows(key: str, rows, columns: list[str]):
    """``rows`` (dicts holding ``columns``, all text) written batch by batch to
    ``<datasets cache>/mergedistill-rows/<key>.arrow`` once, then memory-mapped: a corpus that never fits in
    memory is read from there."""
    import datasets
    import pyarrow as pa

    path = Path(datasets.config.HF_DATASETS_CACHE) / "mergedistill-rows" / f"{key}.arrow"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        schema = pa.schema([pa.field(c, pa.string()) for c in columns])

        def record_batch(batch):
            return pa.record_batch([pa.array(col, pa.string()) for col in batch], schema=schema)

        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                batch: list[list[str]] = [[] for _ in columns]
                for row in rows:
                    for values, column in zip(batch, columns):
                        values.append(str(row[column]))
                    if len(batch[0]) == 10_000:
                        writer.write_batch(record_batch(batch))
                        batch = [[] for _ in columns]
                writer.write_batch(record_batch(batch))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))


def _streamed(lang: str, source: Mapping[str, Any], text_field: str, files: list[str] | None):
    """``streaming: true``: the source read as a stream (``load_dataset(..., streaming=True)``), its first
    ``max_documents`` documents written to Arrow incrementally (keyed by the source, and the files' content).
    Columns kept: the text, and ``id``/``module`` when the first document has them."""
    import itertools

    from datasets import load_dataset

    from mergedistill import io

    cap = source.get("max_documents")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
        raise UserError(f"corpus.sources.{lang}.max_documents: must be a whole number > 0, got {cap!r}")
    if files is not None:
        stream = load_dataset("json", data_files=files, split="train", streaming=True)
        origin = [(f, io.file_fingerprint(f)) for f in files]
    else:
        kwargs = {"revision": source["revision"]} if "revision" in source else {}
        stream = load_dataset(
            source["hub"], source.get("config"), split=source.get("split", "train"), streaming=True, **kwargs
        )
        origin = dict(source)
    rows = iter(itertools.islice(stream, cap))
    first = next(rows, None)
    if first is None:
        raise UserError(f"corpus.sources.{lang}: the source holds no documents")
    if text_field not in first:
        raise UserError(f"corpus.sources.{lang}.text_field: column {text_field!r} not found (has: {', '.join(first)})")
    columns = [text_field] + [c for c in ("id", "module") if c in first and c != text_field]
    key = io.fingerprint("streamed", origin, columns, cap)
    return _arrow_rows(key, itertools.chain([first], rows), columns)


def paragraphs_of(text: str, max_chars: int) -> list[str]:
    """A document's paragraphs: split at line breaks (blank lines or single newlines), whitespace collapsed,
    empty ones dropped, and each cut at spaces into pieces of at most ``max_chars`` characters (0: no cap)."""
    out = []
    for line in str(text).splitlines():
        words = line.split()
        if not words:
            continue
        paragraph = " ".join(words)
        while max_chars and len(paragraph) > max_chars:
            cut = paragraph.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars  # one word longer than the cap: cut inside it
            out.append(paragraph[:cut].rstrip())
            paragraph = paragraph[cut:].lstrip()
        if paragraph:
            out.append(paragraph)
    return out


PARAGRAPHS_FORMAT = "paragraphs-v1"  # bump when ``to_records`` (below) or ``paragraphs_of`` changes what they make


def _load_user(lang: str, split: str, source: Mapping[str, Any], max_paragraph_chars: int = 0):
    from datasets import load_dataset

    from mergedistill import io

    text_field = source.get("text_field", "text")
    if source.get("streaming"):
        files = _user_files(lang, source["path"]) if "path" in source else None
        if files is None and "hub" not in source:
            raise UserError(f"corpus.sources.{lang}: give `path: <files>` or `hub: <dataset name>`")
        if files is not None and not files[0].endswith(JSON_SUFFIXES):
            raw = _load_user_text(files, text_field)  # already read line by line into Arrow
        else:
            raw = _streamed(lang, source, text_field, files)
    elif "hub" in source:  # users with internet
        name = source.get("config")
        kwargs = {"revision": source["revision"]} if "revision" in source else {}
        raw = load_dataset(source["hub"], name, split=source.get("split", "train"), **kwargs)
    elif "path" in source:
        files = _user_files(lang, source["path"])
        raw = _load_user_jsonl(files) if files[0].endswith(JSON_SUFFIXES) else _load_user_text(files, text_field)
    else:
        raise UserError(f"corpus.sources.{lang}: give `path: <files>` or `hub: <dataset name>`")
    if text_field not in raw.column_names:
        raise UserError(
            f"corpus.sources.{lang}.text_field: column {text_field!r} not found (has: {', '.join(raw.column_names)})"
        )
    has_ids = "id" in raw.column_names
    has_modules = "module" in raw.column_names
    mapped = mapped_pages.files_of(raw)  # a one-pass read: its pages are released after each batch

    def to_records(rows, indices):
        """A document's paragraphs, when the document (its id) falls in ``split``: one record each; a document of
        several paragraphs gives ids ``<id>#<n>``."""
        out = {"id": [], "module": [], "text": []}
        for k, index in enumerate(indices):
            doc = str(rows["id"][k]) if has_ids else f"{lang}:{index}"
            if split_of(doc) != split:
                continue
            paragraphs = paragraphs_of(rows[text_field][k], max_paragraph_chars)
            for n, text in enumerate(paragraphs):
                out["id"].append(doc if len(paragraphs) == 1 else f"{doc}#{n}")
                out["module"].append(str(rows["module"][k]) if has_modules else "")
                out["text"].append(text)
        mapped_pages.release(mapped)
        return out

    paragraphs = raw.map(
        to_records,
        with_indices=True,
        batched=True,
        num_proc=_workers(len(raw)),
        remove_columns=raw.column_names,
        desc=f"paragraphs of {lang} ({split})",
        # ours, not datasets' hash of ``to_records`` (which fails on its closure: a random one, so every load of
        # the corpus re-split it into a new cache file): the raw rows' fingerprint and everything the split reads
        new_fingerprint=io.fingerprint(
            PARAGRAPHS_FORMAT, raw._fingerprint, lang, split, text_field, max_paragraph_chars
        )[:32],
    )
    mapped_pages.release(mapped + mapped_pages.files_of(paragraphs))  # what the map's bookkeeping read of them
    return paragraphs


def _workers(rows: int) -> int | None:
    """Processes for a batched map over ``rows`` rows: several only where the corpus is large."""
    from mergedistill.data_store import default_workers

    return default_workers() if rows >= 200_000 and default_workers() > 1 else None


def load_split(
    lang: str,
    split: str,
    corpus_dir: str | Path | None = None,
    sources: Mapping[str, Any] | None = None,
    max_paragraph_chars: int = 0,
):
    """A ``datasets.Dataset`` with columns id, module, text for one language and split.

    ``sources`` maps a language to the user's own corpus (``{"path": glob, "text_field": ...}`` or
    ``{"hub": name, "config": ..., "split": ..., "text_field": ...}``, either with ``streaming: true`` and
    ``max_documents: N``); other languages come from ``corpus_dir``. A user's documents are split into
    paragraphs of at most ``max_paragraph_chars`` characters (``paragraphs_of``); the embedded corpus is stored
    in paragraphs already.
    """
    _offline()
    _check_split(split)
    if sources and lang in sources:
        dataset = _load_user(lang, split, sources[lang], max_paragraph_chars)
    else:
        dataset = _load_embedded(lang, split, resolve_dir(corpus_dir))
    if len(dataset) == 0:
        raise UserError(f"corpus for {lang!r} has no {split} paragraphs; check the files (corpus.sources.{lang})")
    return dataset


def content_fingerprint(corpus_cfg) -> str:
    """sha256 over the text a corpus section reads: the corpus directory's files and, for each language
    with ``sources.<lang>.path``, the matching files' names and bytes (hub sources are named by the config
    itself). A stage that reads the corpus re-runs when a file changes, not only when the config does."""
    from mergedistill import io

    parts: dict = {"corpus_dir": io.file_fingerprint(resolve_dir(corpus_cfg.dir or None))}
    for lang, source in sorted((corpus_cfg.sources or {}).items()):
        pattern = source.get("path") if hasattr(source, "get") else None
        if lang in corpus_cfg.languages and pattern:
            files = sorted(glob.glob(os.path.expanduser(str(pattern))))  # none: the stage reports it clearly
            parts[lang] = [(file, io.file_fingerprint(file)) for file in files if os.path.isfile(file)]
    return io.fingerprint("corpus-content", parts)


def load_texts(lang: str, split: str, cfg=None, limit: int | None = None) -> list[str]:
    """Paragraph texts for a language, using an experiment's corpus section (``cfg.corpus``) when given."""
    return list(load_text_dataset(lang, split, cfg, limit)["text"])


def load_text_dataset(lang: str, split: str, cfg=None, limit: int | None = None):
    """``load_texts``'s paragraphs as a memory-mapped ``datasets.Dataset`` with one column, ``text``."""
    corpus = getattr(cfg, "corpus", None)
    dataset = load_split(
        lang,
        split,
        corpus.dir if corpus and corpus.dir else None,
        corpus.sources if corpus else None,
        getattr(corpus, "max_paragraph_chars", 0),
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.select_columns(["text"])


def stats(corpus_dir: str | Path | None = None) -> dict:
    """Per language and split: paragraphs and characters; per language: module label counts."""
    out = {}
    for lang in languages(corpus_dir):
        entry = {"splits": {}, "modules": Counter()}
        for split in SPLITS:
            dataset = load_split(lang, split, corpus_dir)
            texts = dataset["text"]
            entry["splits"][split] = {"paragraphs": len(texts), "chars": sum(map(len, texts))}
            entry["modules"].update(dataset["module"])
        entry["modules"] = dict(sorted(entry["modules"].items()))
        out[lang] = entry
    return out


def format_stats(corpus_stats: dict) -> str:
    modules = sorted({m for entry in corpus_stats.values() for m in entry["modules"]})
    header = ["lang", *(f"{s} par" for s in SPLITS), "train chars", *modules]
    rows = [header]
    for lang, entry in corpus_stats.items():
        rows.append(
            [
                lang,
                *(str(entry["splits"][s]["paragraphs"]) for s in SPLITS),
                str(entry["splits"]["train"]["chars"]),
                *(str(entry["modules"].get(m, 0)) for m in modules),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows
    )


def train_texts(cfg, lang, dataset: bool = False):
    """A language's training paragraphs: a list, or (``dataset``) the memory-mapped ``datasets`` dataset."""
    load = load_text_dataset if dataset else load_texts
    return load(lang, "train", cfg, limit=cfg.corpus.max_train_paragraphs)


def eval_texts(cfg, lang, limit=None, split="valid"):
    """Held-out paragraphs: ``valid`` for what is chosen on them (teacher selection), ``test`` for the final
    evaluation and the report, so reported scores are not measured on the text the teachers were selected on."""
    return load_texts(lang, split, cfg, limit=limit or cfg.corpus.max_eval_paragraphs)
