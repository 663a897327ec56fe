"""Rebuild the embedded corpus from Debian's ``libreoffice-help-XX`` packages (MPL-2.0).

Each package holds the LibreOffice help as HTML under ``usr/share/libreoffice/help/<lang>/text/<module>/``.
Paragraphs and headings carry ids (``par_id…``, ``hd_id…``) that are the same in every language, so
``<page path>#<id>`` aligns a paragraph across languages; the ``<module>`` folder (scalc, swriter, …) is
its topic label. The build keeps translated paragraphs only (a non-English paragraph identical to the
English one is an untranslated fallback), splits train/valid/test by a hash of the id alone (so an id
lands in the same split in every language: leak-free cross-lingual tasks), and writes gzip JSONL with
``mtime=0`` in sorted order so the same packages give byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import json
import re
import subprocess
import tempfile
from pathlib import Path

from mergedistill.errors import UserError
from mergedistill.io import atomic_dir, write_json_atomic

# corpus language code -> (Debian package suffix, help directory name)
LANGUAGES = {
    "en": ("en-us", "en-US"),
    "de": ("de", "de"),
    "ru": ("ru", "ru"),
    "ja": ("ja", "ja"),
    "fr": ("fr", "fr"),
    "es": ("es", "es"),
    "zh": ("zh-cn", "zh-CN"),
}
SPLITS = ("train", "valid", "test")
_ID = re.compile(r"^(par|hd)_id\w+$")
_SPACE = re.compile(r"\s+")
_LETTER = re.compile(r"\w", re.UNICODE)


def split_of(paragraph_id: str, valid: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split from the id alone: the same id gets the same split in every language."""
    bucket = int.from_bytes(hashlib.sha1(paragraph_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if bucket < test else "valid" if bucket < test + valid else "train"


def clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def is_useful(text: str) -> bool:
    return len(text) >= 3 and _LETTER.search(text) is not None


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of elements whose id is ``par_id…``/``hd_id…``, inside the page's DisplayArea."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []
        self._in_display = 0  # depth inside <div id="DisplayArea">, 0 = outside
        self._open: list[tuple[str, str, list[str]]] = []  # (tag, id, text parts)
        self._skip = 0  # depth inside <script>/<style>

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if self._in_display:
            if tag == "div":
                self._in_display += 1
            element_id = attrs.get("id") or ""
            if _ID.match(element_id) and not self._open:
                self._open.append((tag, element_id, []))
            elif self._open and tag == self._open[0][0]:
                self._open.append((tag, "", []))  # nested same tag: track depth only
        elif tag == "div" and attrs.get("id") == "DisplayArea":
            self._in_display = 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if self._open and tag == self._open[-1][0]:
            opened_tag, element_id, parts = self._open.pop()
            if not self._open and element_id:
                self.paragraphs.append((element_id, clean("".join(parts))))
        if self._in_display and tag == "div":
            self._in_display -= 1

    def handle_data(self, data):
        if self._open and not self._skip:
            self._open[0][2].append(data)


def parse_page(html_text: str) -> list[tuple[str, str]]:
    """(id, text) for every aligned paragraph/heading of one help page, in page order."""
    parser = _ParagraphParser()
    parser.feed(html_text)
    parser.close()
    return parser.paragraphs


def read_help_tree(help_root: Path) -> dict[str, tuple[str, str]]:
    """Map ``<module>/<page>#<id>`` -> (module, text) for one language's extracted help tree."""
    out: dict[str, tuple[str, str]] = {}
    text_dir = help_root / "text"
    for page in sorted(text_dir.rglob("*.html")):
        relative = page.relative_to(text_dir).as_posix()
        module = relative.split("/", 1)[0]
        for element_id, text in parse_page(page.read_text(encoding="utf-8", errors="replace")):
            key = f"{relative}#{element_id}"
            if key not in out and is_useful(text):
                out[key] = (module, text)
    return out


def download_and_extract(languages: list[str], workdir: Path) -> dict[str, tuple[Path, str]]:
    """apt-get download + dpkg-deb -x each package; returns lang -> (help root, package version string)."""
    roots = {}
    for lang in languages:
        suffix, help_dir = LANGUAGES[lang]
        package = f"libreoffice-help-{suffix}"
        target = workdir / lang
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["apt-get", "download", package], cwd=target, capture_output=True, text=True)
        debs = sorted(target.glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise UserError(f"apt-get download {package} failed ({result.stderr.strip()[:200]}); run `apt-get update` first")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target / "root")], check=True)
        version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True, check=True).stdout.strip()
        roots[lang] = (target / "root" / "usr/share/libreoffice/help" / help_dir, f"{package}={version}")
    return roots


def align(trees: dict[str, dict[str, tuple[str, str]]]) -> dict[str, list[dict]]:
    """Per language, the records to keep: English paragraphs deduplicated by text (embedded snippets repeat
    across pages), and for other languages the same ids where the text is really translated."""
    english = trees["en"]
    seen_texts: set[str] = set()
    kept_ids = []
    for key in sorted(english):
        text = english[key][1]
        if text not in seen_texts:
            seen_texts.add(text)
            kept_ids.append(key)
    records: dict[str, list[dict]] = {}
    for lang, tree in trees.items():
        rows = []
        for key in kept_ids:
            if key not in tree:
                continue
            module, text = tree[key]
            if lang != "en" and text == english[key][1]:
                continue  # untranslated fallback
            rows.append({"id": key, "module": module, "text": text})
        records[lang] = rows
    return records


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))


def subsample(rows: list[dict], max_rows: int | None) -> list[dict]:
    """Keep at most ``max_rows``, chosen by id hash (the same ids in every language, so alignment survives)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    ranked = sorted(rows, key=lambda r: hashlib.sha1(("keep:" + r["id"]).encode()).hexdigest())
    keep = {r["id"] for r in ranked[:max_rows]}
    return [r for r in rows if r["id"] in keep]


def build_corpus(out_dir: str | Path, languages: list[str] | None = None, max_per_language: int | None = None, progress: bool = True) -> dict:
    """Download the packages, parse, align, split and write ``out_dir`` atomically; return the manifest."""
    from tqdm import tqdm

    languages = list(languages or LANGUAGES)
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise UserError(f"unknown corpus language {unknown[0]!r}; choose from {', '.join(LANGUAGES)}")
    if "en" not in languages:
        languages = ["en", *languages]  # English defines the aligned ids
    with tempfile.TemporaryDirectory(prefix="mergedistill-corpus-") as tmp:
        roots = download_and_extract(languages, Path(tmp))
        trees = {lang: read_help_tree(roots[lang][0]) for lang in tqdm(languages, desc="parse help pages", disable=not progress)}
    records = align(trees)
    manifest = {"source": "Debian libreoffice-help-* packages (LibreOffice help, MPL-2.0)", "license": "MPL-2.0",
                "packages": {lang: roots[lang][1] for lang in languages}, "splits": {}, "languages": languages,
                "split_rule": "sha1(id) bucket: test < 0.05 <= valid < 0.10 <= train"}
    with atomic_dir(out_dir) as tmp_out:
        for lang in languages:
            rows = subsample(records[lang], max_per_language)
            by_split = {split: [r for r in rows if split_of(r["id"]) == split] for split in SPLITS}
            (tmp_out / lang).mkdir()
            for split, split_rows in by_split.items():
                write_jsonl_gz(tmp_out / lang / f"{split}.jsonl.gz", split_rows)
            manifest["splits"][lang] = {split: len(split_rows) for split, split_rows in by_split.items()}
        write_json_atomic(tmp_out / "manifest.json", manifest)
    return manifest
