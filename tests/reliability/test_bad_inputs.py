"""Catalogue of bad inputs: each one through the real CLI, each a clean one-line exit with nothing written.

Every case runs in a copy of a tiny, complete experiment (``world.py``: corpus files, two teachers, cards,
``exp.yaml`` and the finished outputs of the teachers, select, vocab and cache stages in ``out/``), with
the case directory as working directory. A case may first break an input (``setup``) and bring earlier
stages up to date for its config (``prepare``). Then the whole directory is snapshotted (every path and
its bytes), the bad command runs, and the test asserts:

- the exit code (2 for every bad input: ``UserError``, argparse usage errors, a full disk);
- stderr holds exactly one line besides the pipeline's progress lines (``[stage] ...``, progress bars),
  it is the last line, there is no traceback, and it equals the case's ``message`` (``<tmp>`` stands for
  the case directory, ``…`` for text that varies: a temp name, Python's list of argparse choices);
- the directory is byte-for-byte what it was: no partial output, no temp files, no work dirs, and every
  earlier output (``out/*``, the marker file ``out/earlier-output.txt``) is intact.

Configuration and CLI-usage errors run in a subprocess (``python -m mergedistill``, a fraction of a
second each). Cases that must reach a pipeline stage call ``mergedistill.cli.main`` in-process (the same
code path, minus a 5-10 s interpreter start with torch per case). ``docs/reliability.md`` is generated
from CATALOGUE by ``scripts/reliability_table.py``; ``test_docs_table_is_up_to_date`` keeps it in sync.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.reliability.world import CONFIG, build_world, clean_env, write_config

MARKER = "earlier-output.txt"  # written into out/ before every case: an earlier output that must survive
# the pipeline's stage log lines and tqdm progress bars: the only stderr lines allowed besides the error
PROGRESS = re.compile(r"^\[(teachers|select|vocab|cache|train|baseline|eval|export|report|split|data)\] |\d+%\|")


@dataclass(frozen=True)
class Case:
    id: str
    description: str  # one sentence: the bad input
    exit_code: int
    message: str  # the exact stderr line (<tmp> = the case directory, … = varying text)
    argv: tuple[str, ...]  # the mergedistill command line, run in the case directory
    setup: Callable[[Path], None] | None = None  # break an input (before the snapshot)
    prepare: tuple[str, ...] | None = None  # a command that must succeed before the snapshot (earlier stages)
    in_process: bool = False  # through mergedistill.cli.main instead of a subprocess
    disk_full: bool = False  # every fsync fails with ENOSPC while the command runs
    message_as_root: str | None = None  # the message when the tests run as root (where chmod does not stop writes)

    def expected_message(self) -> str:
        return self.message_as_root if self.message_as_root is not None and os.geteuid() == 0 else self.message


# ------------------------------------------------------------------------------------------------ setups
def config(changes: dict) -> Callable[[Path], None]:
    return lambda tmp: write_config(tmp, changes)


def raw_config(data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "exp.yaml").write_bytes(data)


def write_card(name: str, text: str, cards: list[str]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "cards" / name).write_text(text, encoding="utf-8")
        write_config(tmp, {"teachers": {"cards": cards}})

    return setup


def teacher_card(source: str) -> Callable[[Path], None]:
    return write_card(
        "t.yaml", f"name: t\nsource: {source}\nlanguages: [en]\nmax_length: 64\n", ["cards/t.yaml", "cards/bl.yaml"]
    )


def append_to_en(data: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        with open(tmp / "corpus" / "en.txt", "ab") as handle:
            handle.write(data)

    return setup


def empty_en(tmp: Path) -> None:
    (tmp / "corpus" / "en.txt").write_bytes(b"")


def stale_cache(tmp: Path) -> None:  # the top-k chunks on disk were built for other inputs
    manifest = tmp / "out" / "cache" / "topk" / "manifest.json"
    text = manifest.read_text(encoding="utf-8")
    fingerprint = re.search(r'"fingerprint": "([0-9a-f]+)"', text).group(1)
    manifest.write_text(text.replace(fingerprint, "0" * len(fingerprint)), encoding="utf-8")


def truncate_chunk(tmp: Path) -> None:
    chunk = tmp / "out" / "cache" / "topk" / "chunk-00000.arrow"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


def flip_chunk_byte(tmp: Path) -> None:
    chunk = tmp / "out" / "cache" / "topk" / "chunk-00000.arrow"
    data = bytearray(chunk.read_bytes())
    data[200] ^= 0xFF
    chunk.write_bytes(bytes(data))


def unwritable_output(tmp: Path) -> None:
    """chmod 0500 stops a normal user; root writes anyway, so as root the output dir sits under a file."""
    if os.geteuid() == 0:
        (tmp / "afile").write_text("a regular file\n", encoding="utf-8")
        write_config(tmp, {"output_dir": "afile/sub"})
    else:
        os.chmod(tmp / "out", 0o500)


def readonly_dirs(tmp: Path) -> list[Path]:
    return [p for p in [tmp / "out"] if p.exists() and not os.access(p, os.W_OK)]


TEACHERS_DONE = ("run", "exp.yaml", "--only", "teachers")  # the earlier stage, current for the case's config
R = "mergedistill run: error: "

CATALOGUE: list[Case] = [
    # ---- command line and config file (subprocess) --------------------------------------------------------------
    Case(
        "unknown-verb",
        "A verb that does not exist (`mergedistill frobnicate exp.yaml`).",
        2,
        "mergedistill: error: argument <verb>: invalid choice: 'frobnicate' (choose from …); see `mergedistill --help`",
        ("frobnicate", "exp.yaml"),
    ),
    Case(
        "missing-config",
        "The config file does not exist.",
        2,
        R + "nope.yaml: config file not found; pass the path of a YAML file (see experiments/)",
        ("run", "nope.yaml"),
    ),
    Case(
        "yaml-syntax-error",
        "The config file is not valid YAML (an unclosed `[`).",
        2,
        R + "exp.yaml: not valid YAML (while parsing a flow sequence)",
        ("run", "exp.yaml"),
        setup=raw_config(b"train:\n  steps: [12\n"),
    ),
    Case(
        "config-not-a-mapping",
        "The config file's top level is a list, not a mapping of sections.",
        2,
        R + "exp.yaml: the top level must be a mapping of config sections, not list",
        ("run", "exp.yaml"),
        setup=raw_config(b"- train\n- steps\n"),
    ),
    Case(
        "config-not-utf8",
        "The config file holds a Latin-1 byte that is not UTF-8.",
        2,
        R + "exp.yaml: not valid YAML ('utf-8' codec can't decode byte 0xe9 in position 9: invalid continuation byte)",
        ("run", "exp.yaml"),
        setup=raw_config(b"name: caf\xe9\n"),
    ),
    Case(
        "unknown-key-top-level",
        "An unknown top-level config section (`trainer:` for `train:`).",
        2,
        R + "exp.yaml: bad config key 'trainer': Key 'trainer' not in 'ExperimentConfig'. Did you mean: 'train'?",
        ("run", "exp.yaml"),
        setup=config({"trainer": {"steps": 3}}),
    ),
    Case(
        "unknown-key-nested",
        "An unknown key inside a section (`train.stepz`).",
        2,
        R + "exp.yaml: bad config key 'train.stepz': Key 'stepz' not in 'TrainConfig'. Did you mean: 'steps'?",
        ("run", "exp.yaml"),
        setup=config({"train": {"stepz": 3}}),
    ),
    Case(
        "wrong-type",
        "A string where a number belongs (`train.steps: many`).",
        2,
        R + "exp.yaml: bad config key 'train.steps': Value 'many' of type 'str' could not be converted to Integer",
        ("run", "exp.yaml"),
        setup=config({"train": {"steps": "many"}}),
    ),
    Case(
        "negative-steps",
        "A negative number of training steps.",
        2,
        R + "exp.yaml: config key 'train.steps' must be > 0, got -5",
        ("run", "exp.yaml"),
        setup=config({"train": {"steps": -5}}),
    ),
    Case(
        "negative-lr",
        "A negative learning rate.",
        2,
        R + "exp.yaml: config key 'train.lr' must be > 0, got -0.001",
        ("run", "exp.yaml"),
        setup=config({"train": {"lr": -0.001}}),
    ),
    Case(
        "negative-batch-size",
        "A negative batch size.",
        2,
        R + "exp.yaml: config key 'train.batch_size' must be > 0, got -4",
        ("run", "exp.yaml"),
        setup=config({"train": {"batch_size": -4}}),
    ),
    Case(
        "negative-top-k",
        "A negative top-k for the teacher cache.",
        2,
        R + "exp.yaml: config key 'cache.top_k' must be > 0, got -1",
        ("run", "exp.yaml"),
        setup=config({"cache": {"top_k": -1}}),
    ),
    Case(
        "nan-lr",
        "A NaN learning rate in the config file (`lr: .nan`).",
        2,
        R + "exp.yaml: config key 'train.lr' must be a finite number, got nan",
        ("run", "exp.yaml"),
        setup=config({"train": {"lr": float("nan")}}),
    ),
    Case(
        "nan-override",
        "A NaN temperature given as an override (`train.temperature=nan`).",
        2,
        R + "exp.yaml: config key 'train.temperature' must be a finite number, got nan",
        ("run", "exp.yaml", "train.temperature=nan"),
    ),
    Case(
        "vocab-cap-below-specials",
        "A vocabulary cap smaller than the special tokens (`vocab.max_size: 3`).",
        2,
        R + "exp.yaml: config key 'vocab.max_size' must be >= 8 (room for the special tokens) or null, got 3",
        ("run", "exp.yaml"),
        setup=config({"vocab": {"max_size": 3}}),
    ),
    Case(
        "unknown-strategy",
        "A selection strategy that does not exist (`select.strategy: best`).",
        2,
        R + "exp.yaml: config key 'select.strategy' must be one of static, score, min-ce, weighted, got 'best'",
        ("run", "exp.yaml"),
        setup=config({"select": {"strategy": "best"}}),
    ),
    Case(
        "override-without-equals",
        "An override without `=` (`train.steps`).",
        2,
        R + "override 'train.steps': expected key=value (e.g. train.steps=100)",
        ("run", "exp.yaml", "train.steps"),
    ),
    Case(
        "override-unknown-key",
        "An override of a key that does not exist (`train.stepz=3`).",
        2,
        R + "exp.yaml: bad config key 'train.stepz': Key 'stepz' not in 'TrainConfig'. Did you mean: 'steps'?",
        ("run", "exp.yaml", "train.stepz=3"),
    ),
    Case(
        "override-wrong-type",
        "An override with a value of the wrong type (`train.steps=many`).",
        2,
        R + "exp.yaml: bad config key 'train.steps': Value 'many' of type 'str' could not be converted to Integer",
        ("run", "exp.yaml", "train.steps=many"),
    ),
    # ---- teachers (in-process: the teachers stage) ---------------------------------------------------------------
    Case(
        "missing-card-file",
        "`teachers.cards` names a card file that does not exist.",
        2,
        R + "cards/nope.yaml: teacher card not found; check the path (teachers.cards in the experiment config)",
        ("run", "exp.yaml"),
        setup=config({"teachers": {"cards": ["cards/wp.yaml", "cards/nope.yaml"]}}),
        in_process=True,
    ),
    Case(
        "duplicate-card-names",
        "Two teacher cards share one name.",
        2,
        R + "teachers.cards: two cards share a name (wp, bl, wp); names must be unique",
        ("run", "exp.yaml"),
        setup=write_card(
            "wp2.yaml",
            "name: wp\nsource: ./teachers/wp\nlanguages: [en]\n",
            ["cards/wp.yaml", "cards/bl.yaml", "cards/wp2.yaml"],
        ),
        in_process=True,
    ),
    Case(
        "unknown-teacher-family",
        "A teacher card with a tokenizer family that does not exist (`family: tiktoken`).",
        2,
        R + "cards/t.yaml: config key 'family' must be wordpiece, sentencepiece or bytelevel, got 'tiktoken'",
        ("run", "exp.yaml"),
        setup=write_card(
            "t.yaml",
            "name: t\nsource: ./teachers/wp\nlanguages: [en]\nfamily: tiktoken\n",
            ["cards/t.yaml", "cards/bl.yaml"],
        ),
        in_process=True,
    ),
    Case(
        "teacher-family-mismatch",
        "A card that says `family: bytelevel` for a WordPiece teacher.",
        2,
        R + "teacher t: card says family 'bytelevel' but the tokenizer is 'wordpiece'; fix the card",
        ("run", "exp.yaml"),
        setup=write_card(
            "t.yaml",
            "name: t\nsource: ./teachers/wp\nlanguages: [en]\nfamily: bytelevel\n",
            ["cards/t.yaml", "cards/bl.yaml"],
        ),
        in_process=True,
    ),
    Case(
        "missing-teacher-dir",
        "A card whose source directory does not exist.",
        2,
        R
        + "teachers/nowhere: teacher directory not found; build it (mergedistill teachers build) or fix the card's source",
        ("run", "exp.yaml"),
        setup=teacher_card("./teachers/nowhere"),
        in_process=True,
    ),
    Case(
        "teacher-without-config",
        "A card whose source directory is not a saved checkpoint (no config.json).",
        2,
        R + "teachers: no config.json; a teacher directory must come from save_pretrained",
        ("run", "exp.yaml"),
        setup=teacher_card("./teachers"),
        in_process=True,
    ),
    Case(
        "teacher-without-mlm-head",
        "A card whose checkpoint is a bare encoder (`BertModel`) without a masked-LM head.",
        2,
        R + "teachers/headless: model BertModel has no masked-LM head; use a *ForMaskedLM checkpoint",
        ("run", "exp.yaml"),
        setup=teacher_card("./teachers/headless"),
        in_process=True,
    ),
    Case(
        "special-token-mismatch",
        "A teacher whose tokenizer's mask token has an id beyond the model's embedding rows.",
        2,
        R + "./teachers/special-mismatch: special token '<mask>' has id 300 but the model has 300 token embeddings; "
        "the tokenizer does not match the model (save the checkpoint's own tokenizer, or resize_token_embeddings)",
        ("run", "exp.yaml"),
        setup=teacher_card("./teachers/special-mismatch"),
        in_process=True,
    ),
    Case(
        "tokenizer-without-mask",
        "A teacher whose tokenizer has no mask token.",
        2,
        R + "./teachers/no-mask: tokenizer has no mask token; a masked-LM teacher needs one (set mask_token)",
        ("run", "exp.yaml"),
        setup=teacher_card("./teachers/no-mask"),
        in_process=True,
    ),
    # ---- corpus and selection (in-process: the select stage) -----------------------------------------------------
    Case(
        "empty-corpus-file",
        "The English corpus file is empty (re-running select).",
        2,
        "mergedistill select: error: corpus for 'en' has no valid paragraphs; check the files (corpus.sources.en)",
        ("select", "exp.yaml", "--force"),
        setup=empty_en,
        in_process=True,
    ),
    Case(
        "corpus-not-utf8",
        "The English corpus file ends with a Latin-1 line.",
        2,
        "mergedistill select: error: corpus/en.txt:241 (byte 4 of the line): not UTF-8; convert it, e.g. `iconv -t UTF-8`",
        ("select", "exp.yaml", "--force"),
        setup=append_to_en(b"caf\xe9 au lait\n"),
        in_process=True,
    ),
    Case(
        "corpus-1mb-line",
        "The English corpus file ends with one 1 MB line (no line breaks).",
        2,
        "mergedistill select: error: corpus/en.txt:241: a line of 1,000,001 characters (limit 100,000); "
        "a text corpus holds one paragraph per line, so break the text into paragraphs",
        ("select", "exp.yaml", "--force"),
        setup=append_to_en(b"word " * 200_000 + b"\n"),
        in_process=True,
    ),
    Case(
        "corpus-glob-no-match",
        "`corpus.sources.en.path` matches no file.",
        2,
        "mergedistill select: error: corpus.sources.en.path: no file matches 'corpus/en-*.txt'",
        ("select", "exp.yaml"),
        setup=config({"corpus": {"sources": {"en": {"path": "corpus/en-*.txt"}}}}),
        prepare=TEACHERS_DONE,
        in_process=True,
    ),
    Case(
        "language-without-teacher",
        "`corpus.languages` has a language (fr) that no teacher card lists.",
        2,
        "mergedistill select: error: language 'fr' has no teacher among the cards (select.candidates); "
        "add a teacher card whose languages include it",
        ("select", "exp.yaml"),
        setup=config(
            {
                "corpus": {"languages": ["en", "de", "fr"], "sources": {"fr": {"path": "corpus/fr.txt"}}},
                "select": {"assignment": {"fr": "wp"}},
            }
        ),
        prepare=TEACHERS_DONE,
        in_process=True,
    ),
    Case(
        "static-unknown-teacher",
        "The static assignment names a teacher that has no card.",
        2,
        "mergedistill select: error: select.assignment.de: unknown teacher 'nobody'; known teachers: bl, wp",
        ("select", "exp.yaml"),
        setup=config({"select": {"assignment": {"de": "nobody"}}}),
        in_process=True,
    ),
    Case(
        "weighted-mixed-tokenizers",
        "`select.strategy: weighted` where German's candidates (WordPiece, byte-level BPE) tokenize differently.",
        2,
        "mergedistill select: error: select.strategy=weighted: teachers bl, wp for 'de' use different tokenizations, so their "
        "distributions cannot be mixed position by position; use min-ce or restrict select.candidates",
        ("select", "exp.yaml"),
        setup=config({"select": {"strategy": "weighted"}}),
        in_process=True,
    ),
    Case(
        "vocab-cap-too-small",
        "A vocabulary cap (`vocab.max_size: 10`) below the pieces the teachers need.",
        2,
        "mergedistill vocab: error: vocab.max_size=10 is below the 293 pieces the teachers need to tokenize their languages "
        "(specials included); raise vocab.max_size or set it to null",
        ("vocab", "build", "exp.yaml"),
        setup=config({"vocab": {"max_size": 10}}),
        in_process=True,
    ),
    Case(
        "vocab-min-freq-unknown-teacher",
        "`vocab.min_freq_by_teacher` names a teacher that has no card (a typo).",
        2,
        "mergedistill vocab: error: vocab.min_freq_by_teacher: no teacher card named nobody in teachers.cards "
        "(names: wp, bl)",
        ("vocab", "build", "exp.yaml"),
        setup=config({"vocab": {"min_freq_by_teacher": {"nobody": 0.0}}}),
        in_process=True,
    ),
    # ---- cache and training (in-process: the train stage) --------------------------------------------------------
    Case(
        "nan-loss",
        "A learning rate so large (`train.lr=1e6`, no clipping) that the loss becomes NaN.",
        2,
        "mergedistill train: error: loss became nan at step 4; lower train.lr (now 1000000.0) or check the data",
        ("train", "exp.yaml", "train.lr=1e6", "train.grad_clip=0.0"),
        in_process=True,
    ),
    Case(
        "fp16-on-cpu",
        "`train.precision=fp16` on a CPU, where DeepSpeed has no fp16.",
        2,
        "mergedistill train: error: train.precision: fp16 is not supported by DeepSpeed on cpu; use train.precision: bf16 (or fp32), "
        "or train on a GPU",
        ("train", "exp.yaml", "train.precision=fp16"),
        in_process=True,
    ),
    Case(
        "cache-stale-fingerprint",
        "The top-k cache on disk was built for other teachers, vocabulary or data.",
        2,
        "mergedistill train: error: cache out/cache/topk was built for different teachers, vocabulary or data (stale fingerprint); "
        "rebuild it with `mergedistill cache build` (or delete out/cache/topk)",
        ("train", "exp.yaml"),
        setup=stale_cache,
        in_process=True,
    ),
    Case(
        "cache-truncated-shard",
        "A top-k cache Arrow shard cut to half its size.",
        2,
        "mergedistill train: error: out/cache/topk/chunk-00000.arrow: cache chunk is missing, truncated or corrupted (checksum mismatch); "
        "rebuild it with `mergedistill cache build` (or delete out/cache/topk)",
        ("train", "exp.yaml"),
        setup=truncate_chunk,
        in_process=True,
    ),
    Case(
        "cache-corrupted-byte",
        "One flipped byte in a top-k cache Arrow shard.",
        2,
        "mergedistill train: error: out/cache/topk/chunk-00000.arrow: cache chunk is missing, truncated or corrupted (checksum mismatch); "
        "rebuild it with `mergedistill cache build` (or delete out/cache/topk)",
        ("train", "exp.yaml"),
        setup=flip_chunk_byte,
        in_process=True,
    ),
    Case(
        "vocab-inspect-not-a-vocab",
        "`vocab inspect` on a directory that is not a merged vocabulary.",
        2,
        "mergedistill vocab: error: out/teachers: not a merged vocabulary (pieces.json missing); build it with `mergedistill vocab build`",
        ("vocab", "inspect", "out/teachers"),
        in_process=True,
    ),
    # ---- the machine ---------------------------------------------------------------------------------------------
    Case(
        "unwritable-output-dir",
        "An output directory that cannot be written (chmod 0500; as root: a path under a regular file).",
        2,
        R + "output_dir out: not writable; choose a writable path",
        ("run", "exp.yaml"),
        setup=unwritable_output,
        in_process=True,
        message_as_root=R + "output_dir afile/sub: cannot create it (Not a directory); choose a writable path",
    ),
    Case(
        "disk-full",
        "The disk fills up (ENOSPC) as a forced re-run of the teachers stage starts writing.",
        2,
        R + "out/teachers.work/.fingerprint: no space left on device; free some disk space and re-run the same command",
        ("run", "exp.yaml", "--only", "teachers", "--force", "teachers"),
        in_process=True,
        disk_full=True,
    ),
]


# ------------------------------------------------------------------------------------------------ machinery
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("world"), stages_until="cache")
    (root / "out" / MARKER).write_text("an earlier output that a failed command must leave alone\n", encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) -> 'dir' or the sha256 of its bytes."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def matches(expected: str, actual: str) -> bool:
    return re.fullmatch(".+?".join(re.escape(part) for part in expected.split("…")), actual) is not None


def run_case(case: Case, tmp: Path, capsys, monkeypatch) -> tuple[int, str]:
    if not case.in_process:
        result = subprocess.run(
            [sys.executable, "-m", "mergedistill", *case.argv],
            cwd=tmp,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result.returncode, result.stderr
    from mergedistill import cli

    # capsys (what mergedistill prints to sys.stderr), not capfd: DeepSpeed silences its op-compatibility probe by
    # dup2-ing over sys.stderr.fileno(), which under capfd is pytest's capture file, so the probe's linker noise
    # would leak into the capture; in a real process it is fd 2 and silenced (the subprocess cases see fd 2).
    monkeypatch.chdir(tmp)
    capsys.readouterr()
    if case.disk_full:

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", no_space)
    try:
        code = cli.main(list(case.argv))
    except SystemExit as exit_:
        code = exit_.code
    finally:
        monkeypatch.undo()
    return code, capsys.readouterr().err


def prepare(case: Case, tmp: Path, capsys, monkeypatch) -> None:
    from mergedistill import cli

    monkeypatch.chdir(tmp)
    try:
        assert cli.main(list(case.prepare)) == 0, capsys.readouterr().err[-2000:]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CATALOGUE])
def test_bad_input(case: Case, world: Path, tmp_path: Path, capsys, monkeypatch):
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    if case.setup is not None:
        case.setup(tmp_path)
    if case.prepare is not None:
        prepare(case, tmp_path, capsys, monkeypatch)
    before = snapshot(tmp_path)
    try:
        code, stderr = run_case(case, tmp_path, capsys, monkeypatch)
        after = snapshot(tmp_path)
    finally:
        for path in readonly_dirs(tmp_path):
            os.chmod(path, 0o755)
    assert code == case.exit_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not PROGRESS.search(line)]
    assert len(errors) == 1 and lines[-1] == errors[0], (
        f"expected one error line at the end of stderr:\n{stderr[-3000:]}"
    )
    line = errors[0].replace(str(tmp_path), "<tmp>")
    assert matches(case.expected_message(), line), f"\nexpected: {case.expected_message()}\nactual:   {line}"
    assert after == before, f"files changed: {sorted(set(before.items()) ^ set(after.items()))}"


def test_catalogue_is_well_formed():
    ids = [case.id for case in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 25
    for case in CATALOGUE:
        assert case.description.endswith(".") and "\n" not in case.description + case.message + (
            case.message_as_root or ""
        )
        assert case.disk_full <= case.in_process and (case.prepare is None or case.in_process)
    assert CONFIG["output_dir"] == "out"  # the messages above name out/...


def test_docs_table_is_up_to_date(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "reliability_table.py"), "--out", str(tmp_path / "reliability.md")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    committed = repo / "docs" / "reliability.md"
    assert committed.is_file(), "docs/reliability.md is missing; run python scripts/reliability_table.py"
    assert (tmp_path / "reliability.md").read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), (
        "docs/reliability.md is out of date; run python scripts/reliability_table.py"
    )


def test_disk_full_outside_the_atomic_writers_is_one_line_too(monkeypatch, capsys):
    """ENOSPC from any other writer (a checkpoint, an Arrow chunk) reaches the CLI as OSError: one line, exit 2."""
    from mergedistill import cli

    select = cli.verb_command("select")

    def full(args):
        raise OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), "out/train.work/checkpoints/step-3/mp_rank_00_model_states.pt"
        )

    monkeypatch.setattr(select, "main", full)
    assert cli.main(["select", "exp.yaml"]) == 2
    assert capsys.readouterr().err == (
        "mergedistill select: error: out/train.work/checkpoints/step-3/mp_rank_00_model_states.pt: "
        "no space left on device; free some disk space and re-run the same command\n"
    )
    monkeypatch.setattr(select, "main", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):  # other OS errors are bugs or hardware: they keep their traceback
        cli.main(["select", "exp.yaml"])
