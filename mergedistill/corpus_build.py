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
import shutil
import subprocess
import tempfile
from pathlib import Path

from mergedistill.errors import UserError
from mergedistill.io import atomic_dir

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
_ID = re.compile(r"^(?:par|hd)_\w|^N\d+$")  # aligned ids: par_id…, hd_id…, par_…, N0091; not bm_…
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
    """Collects the text of elements with an aligned id (``par_…``, ``hd_…``, ``N…``) inside the page's DisplayArea.

    Inline switches (``<span class="switchinline">``) hold one hidden ``<span>`` per platform or module
    ("Tools - Options" / "LibreOffice - Preferences"); the help viewer shows one of them, so we keep the
    ``default…`` case (or the first case when there is none) instead of gluing all of them together.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []
        self._in_display = 0  # depth inside <div id="DisplayArea">, 0 = outside
        self._open: list[tuple[str, str]] = []  # (tag, id) of the paragraph being read, then nested same tags
        self._spans: list[str] = []  # roles of the <span>s open inside the paragraph: plain, switch, case
        self._buffers: list[list[str]] = []  # text parts: the paragraph's, then one per open switch case
        self._cases: list[list[tuple[bool, str]]] = []  # per open switch: (is default, text) of its cases
        self._skip = 0  # depth inside <script>/<style>

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if not self._in_display:
            if tag == "div" and attrs.get("id") == "DisplayArea":
                self._in_display = 1
            return
        if tag == "div":
            self._in_display += 1
        if not self._open:
            if _ID.match(attrs.get("id") or ""):
                self._open.append((tag, attrs["id"]))
                self._buffers = [[]]
            return
        if tag == self._open[0][0]:
            self._open.append((tag, ""))  # nested same tag: track depth only
        elif tag == "span":
            self._open_span(attrs)

    def _open_span(self, attrs: dict) -> None:
        if "switchinline" in (attrs.get("class") or "").split():
            self._spans.append("switch")
            self._cases.append([])
        elif self._spans and self._spans[-1] == "switch":
            self._spans.append("case")
            self._buffers.append([])
            self._cases[-1].append(((attrs.get("id") or "").startswith("default"), ""))
        else:
            self._spans.append("plain")

    def _close_span(self) -> None:
        role = self._spans.pop()
        if role == "case":
            text = "".join(self._buffers.pop())
            is_default, _ = self._cases[-1][-1]
            self._cases[-1][-1] = (is_default, text)
        elif role == "switch":
            cases = self._cases.pop()
            chosen = next((text for is_default, text in cases if is_default), cases[0][1] if cases else "")
            self._buffers[-1].append(chosen)

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if self._open and tag == "span" and self._spans:
            self._close_span()
        elif self._open and tag == self._open[-1][0]:
            _, element_id = self._open.pop()
            if not self._open:
                while self._spans:  # unclosed spans: close them so their text is not lost
                    self._close_span()
                self.paragraphs.append((element_id, clean("".join(self._buffers[0]))))
        if self._in_display and tag == "div":
            self._in_display -= 1

    def handle_data(self, data):
        if not self._open or self._skip:
            return
        if self._spans and self._spans[-1] == "switch":
            return  # whitespace between the cases of a switch
        self._buffers[-1].append(data)


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


def download_and_extract(lang: str, workdir: Path) -> tuple[Path, str]:
    """``apt-get download`` + ``dpkg-deb -x`` one language's package; returns (help root, "package=version")."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"corpus build needs {' and '.join(missing)} (a Debian or Ubuntu machine); use the embedded data/corpus instead"
        )
    suffix, help_dir = LANGUAGES[lang]
    package = f"libreoffice-help-{suffix}"
    target = workdir / lang
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", package], cwd=target, capture_output=True, text=True)
    debs = sorted(target.glob("*.deb"))
    if result.returncode != 0 or not debs:
        raise UserError(
            f"apt-get download {package} failed ({result.stderr.strip()[:200]}); run `apt-get update` first"
        )
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target / "root")], check=True)
    version = subprocess.run(
        ["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return target / "root" / "usr/share/libreoffice/help" / help_dir, f"{package}={version}"


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


def subsample(records: dict[str, list[dict]], max_rows: int | None) -> dict[str, list[dict]]:
    """Keep at most ``max_rows`` per language. Ids are ranked once for all languages (ids present in more
    languages first, then by hash), so the languages keep the same ids as far as possible and stay aligned."""
    if max_rows is None:
        return records
    languages_of: dict[str, int] = {}
    for rows in records.values():
        for row in rows:
            languages_of[row["id"]] = languages_of.get(row["id"], 0) + 1

    def rank(paragraph_id: str):
        return -languages_of[paragraph_id], hashlib.sha1(("keep:" + paragraph_id).encode("utf-8")).hexdigest()

    out = {}
    for lang, rows in records.items():
        keep = set(sorted((row["id"] for row in rows), key=rank)[:max_rows])
        out[lang] = [row for row in rows if row["id"] in keep]
    return out


LICENSE_TEXT = """# The embedded corpus: license and attribution

This directory holds paragraphs of the **LibreOffice Help** in {n} languages ({languages}), extracted from
these Debian packages (also listed in `manifest.json`):

{packages}

- Copyright: The Document Foundation and the LibreOffice contributors and translators.
- License: Mozilla Public License 2.0 (MPL-2.0), https://www.mozilla.org/MPL/2.0/ . The text here is a
  derived extract (HTML stripped, whitespace collapsed, untranslated paragraphs dropped); the source form
  is the LibreOffice help (https://git.libreoffice.org/help) and the Debian source package `libreoffice`.

How it is made: `python scripts/build_corpus.py` (= `mergedistill corpus build`) downloads the packages with
`apt-get download`, unpacks them with `dpkg-deb -x`, reads every help page's paragraphs and headings whose
ids (`par_id…`, `hd_id…`) align across languages (keeping the default case of inline platform/module
variants), keeps `<page>#<id>` as the aligned paragraph id and the page's module folder (scalc, swriter,
sbasic, …) as the topic label. It drops paragraphs shorter than 3 characters or without a letter or digit,
repeated English paragraphs (kept once), and non-English paragraphs equal to the English one (untranslated),
then splits train/valid/test by a hash of the id (the same id is in the same split in every language).
The output is deterministic: the same packages give byte-identical files.
"""


def write_corpus(
    out_dir: str | Path, records: dict[str, list[dict]], packages: dict[str, str], max_per_language: int | None = None
) -> dict:
    """Write ``<lang>/{train,valid,test}.jsonl.gz``, ``manifest.json`` and ``LICENSE-CORPUS.md`` atomically."""
    records = subsample(records, max_per_language)
    languages = list(records)
    manifest = {
        "source": "Debian libreoffice-help-* packages (LibreOffice help, MPL-2.0)",
        "license": "MPL-2.0",
        "packages": {lang: packages[lang] for lang in languages},
        "splits": {},
        "languages": languages,
        "split_rule": "sha1(id) bucket: test < 0.05 <= valid < 0.10 <= train",
    }
    package_list = "\n".join(f"- `{packages[lang]}`" for lang in languages)
    with atomic_dir(out_dir) as tmp_out:
        for lang in languages:
            by_split = {split: [r for r in records[lang] if split_of(r["id"]) == split] for split in SPLITS}
            (tmp_out / lang).mkdir()
            for split, split_rows in by_split.items():
                write_jsonl_gz(tmp_out / lang / f"{split}.jsonl.gz", split_rows)
            manifest["splits"][lang] = {split: len(split_rows) for split, split_rows in by_split.items()}
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp_out / "manifest.json").write_text(manifest_text, encoding="utf-8")  # the whole dir is renamed into place
        license_text = LICENSE_TEXT.format(n=len(languages), languages=", ".join(languages), packages=package_list)
        (tmp_out / "LICENSE-CORPUS.md").write_text(license_text, encoding="utf-8")
    return manifest


def build_corpus(
    out_dir: str | Path, languages: list[str] | None = None, max_per_language: int | None = None, progress: bool = True
) -> dict:
    """Download the packages, parse, align, split and write ``out_dir`` atomically; return the manifest."""
    from tqdm import tqdm

    languages = list(languages or LANGUAGES)
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise UserError(f"unknown corpus language {unknown[0]!r}; choose from {', '.join(LANGUAGES)}")
    if "en" not in languages:
        languages = ["en", *languages]  # English defines the aligned ids
    trees, packages = {}, {}
    with tempfile.TemporaryDirectory(prefix="mergedistill-corpus-") as tmp:
        bar = tqdm(languages, desc="corpus", unit="lang", disable=not progress)
        for lang in bar:
            bar.set_postfix_str(f"{lang}: download")
            help_root, packages[lang] = download_and_extract(lang, Path(tmp))
            bar.set_postfix_str(f"{lang}: parse")
            trees[lang] = read_help_tree(help_root)
    return write_corpus(out_dir, align(trees), packages, max_per_language)
