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

from mergedistill.corpus_build import SPLITS, split_of
from mergedistill.errors import UserError

EMBEDDED_CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"
COLUMNS = ("id", "module", "text")


def _offline() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()  # many small loads; a bar each would drown the output


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
    """Plain text, one paragraph per line (blank lines are dropped later, after ids are given)."""
    from datasets import Dataset

    rows = []
    for file in files:
        with _open_text(file) as handle:
            rows += [line.rstrip("\n") for line in handle]
    return Dataset.from_dict({text_field: rows})


def _load_user(lang: str, split: str, source: Mapping[str, Any]):
    from datasets import load_dataset

    text_field = source.get("text_field", "text")
    if "hub" in source:  # users with internet
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

    def to_record(row, index):
        text = " ".join(str(row[text_field]).split())
        return {
            "id": str(row["id"]) if has_ids else f"{lang}:{index}",
            "module": str(row["module"]) if has_modules else "",
            "text": text,
        }

    records = raw.map(to_record, with_indices=True, remove_columns=raw.column_names)
    return records.filter(lambda r: bool(r["text"]) and split_of(r["id"]) == split)


def load_split(lang: str, split: str, corpus_dir: str | Path | None = None, sources: Mapping[str, Any] | None = None):
    """A ``datasets.Dataset`` with columns id, module, text for one language and split.

    ``sources`` maps a language to the user's own corpus (``{"path": glob, "text_field": ...}`` or
    ``{"hub": name, "config": ..., "split": ..., "text_field": ...}``); other languages come from ``corpus_dir``.
    """
    _offline()
    _check_split(split)
    if sources and lang in sources:
        dataset = _load_user(lang, split, sources[lang])
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
    corpus = getattr(cfg, "corpus", None)
    dataset = load_split(lang, split, corpus.dir if corpus and corpus.dir else None, corpus.sources if corpus else None)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return list(dataset["text"])


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
