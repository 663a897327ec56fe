"""One-pass reads of memory-mapped Arrow files leave the process's resident memory as it was (``mapped_pages``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mergedistill import mapped_pages
from mergedistill.data_store import texts_summary

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
TEXT_MB = 24


def rss_file_mb() -> float:
    """This process's resident file-backed pages (``RssFile``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def write_texts(path: Path, megabytes: int):
    """A ``datasets`` dataset of ~``megabytes`` MB of text in one Arrow file, memory-mapped (as
    ``corpus.load_text_dataset``)."""
    import pyarrow as pa
    from datasets import Dataset

    schema = pa.schema([pa.field("text", pa.string())])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for block in range(megabytes):
            texts = [f"{block}:{i} " + "lorem ipsum dolor sit amet " * 36 for i in range(1000)]  # ~1 MB
            writer.write_batch(pa.record_batch([pa.array(texts, pa.string())], schema=schema))
    return Dataset.from_file(str(path))


@pytest.fixture
def mapped_texts(tmp_path):
    return write_texts(tmp_path / "texts.arrow", TEXT_MB)


def test_hashing_a_mapped_dataset_does_not_keep_its_pages(mapped_texts, monkeypatch):
    expected = texts_summary(list(mapped_texts["text"]))  # read once into a list: the reference (and warm cache)
    mapped_pages.release(mapped_pages.files_of(mapped_texts))
    before = rss_file_mb()
    assert texts_summary(mapped_texts) == expected  # the data is untouched: same digest, characters, count
    released_growth = rss_file_mb() - before
    # the control: without the release the same pass keeps the whole file mapped
    monkeypatch.setattr(mapped_pages, "release", lambda files: 0)
    before = rss_file_mb()
    assert texts_summary(mapped_texts) == expected
    kept_growth = rss_file_mb() - before
    assert kept_growth > 0.8 * TEXT_MB and released_growth < 4, (kept_growth, released_growth)


def test_release_touches_only_the_named_files_read_only_mappings(mapped_texts, tmp_path):
    files = mapped_pages.files_of(mapped_texts)
    assert files == [str((tmp_path / "texts.arrow").resolve())]
    assert sum(end - start for start, end in mapped_pages.mappings(files)) >= 0.9 * TEXT_MB * 1e6
    assert mapped_pages.files_of(["a list", "of texts"]) == [] and mapped_pages.release([]) == 0
    assert mapped_pages.release([str(tmp_path / "not-mapped.arrow")]) == 0
    n = len(mapped_texts)
    assert mapped_pages.release(files) >= 0.9 * TEXT_MB * 1e6
    assert mapped_texts[n - 1]["text"].startswith(f"{TEXT_MB - 1}:999 ")  # read back after the release


def test_building_sequences_from_a_mapped_dataset_does_not_keep_its_pages(tmp_path, monkeypatch):
    """The data path's tokenizing pass (here in this process: ``workers=1``) releases the text's pages too."""
    from mergedistill.data_store import stream_sequences
    from tests.test_data_store import word_level_teacher

    megabytes = 8
    texts = write_texts(tmp_path / "texts.arrow", megabytes)
    teacher = word_level_teacher(texts[:1000]["text"])

    drop = mapped_pages.release  # the real one: the control below turns the data path's off

    def build(dataset, data_dir) -> float:
        drop(mapped_pages.files_of(texts))
        before = rss_file_mb()
        sequences, _ = stream_sequences(data_dir, dataset, teacher.tokenizer, "words", 128, 2, 3, workers=1)
        assert len(sequences) > 0
        return rss_file_mb() - before

    build(texts.select(range(500)), tmp_path / "warm-up")  # imports and maps what any build needs
    released_growth = build(texts, tmp_path / "released")
    monkeypatch.setattr(mapped_pages, "release", lambda files: 0)
    kept_growth = build(texts, tmp_path / "kept")
    assert kept_growth > 0.8 * megabytes and released_growth < 2, (kept_growth, released_growth)


def write_sequences(path: Path, count: int, length: int = 128):
    """An Arrow file of ``count`` packed sequences (one ``ids`` list<int32> column, as ``build_sequences`` writes)."""
    import numpy as np
    import pyarrow as pa

    schema = pa.schema([pa.field("ids", pa.list_(pa.int32()))])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, count, 5000):
            rows = np.arange(start, min(start + 5000, count), dtype=np.int32)
            values = np.repeat(rows, length)  # sequence i holds i, length times
            offsets = np.arange(0, len(values) + 1, length, dtype=np.int32)
            writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(offsets, values)], schema=schema))


def test_random_reads_keep_a_bounded_number_of_pages(tmp_path, monkeypatch):
    """Opening the sequences and reading them at random (what batches do) keeps a few MB of the file resident at any
    time, with the default ``RELEASE_EVERY``: a read maps a 64 KB window, or a whole large folio of up to 2 MB where
    the kernel maps those per fault (Linux 6.18), so 1,024 reads between releases (the old default) kept the whole
    file."""
    import numpy as np

    from mergedistill import data_store

    count = 50_000  # 128 x 4 bytes each: ~25 MB
    write_sequences(tmp_path / "sequences.arrow", count)
    (tmp_path / "sequences.arrow").read_bytes()  # a file just written: its page cache is warm
    order = np.random.default_rng(0).permutation(count)[:4000]

    def peak_growth_reading(release_every: int | None) -> float:
        if release_every is not None:
            monkeypatch.setattr(data_store, "RELEASE_EVERY", release_every)
        before = rss_file_mb()
        sequences = data_store.ArrowSequences(tmp_path / "sequences.arrow")
        peak = rss_file_mb() - before
        for k, i in enumerate(order):
            seq = sequences[int(i)]
            assert len(seq) == 128 and int(seq[0]) == int(i) and int(seq[-1]) == int(i)  # released pages read back
            if k % 8 == 7:
                peak = max(peak, rss_file_mb() - before)
        mapped_pages.release([str((tmp_path / "sequences.arrow").resolve())])
        return peak

    bounded, control = peak_growth_reading(None), peak_growth_reading(10**9)
    assert control > 8 and bounded < 12, (control, bounded)  # RELEASE_EVERY x 2 x at most 2 MB between releases


def write_small_batches(path: Path, megabytes: int) -> int:
    """~``megabytes`` MB of text in record batches of ~16 KB (a ``datasets`` map writes 1,000 rows a batch); rows."""
    import pyarrow as pa

    schema = pa.schema([pa.field("text", pa.string())])
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for block in range(megabytes * 64):
            texts = [f"{block}:{i} " + "lorem ipsum dolor sit amet " * 9 for i in range(64)]  # ~16 KB
            writer.write_batch(pa.record_batch([pa.array(texts, pa.string())], schema=schema))
            rows += len(texts)
    return rows


def test_opening_a_mapped_file_does_not_keep_its_pages(tmp_path, monkeypatch):
    """``datasets`` opens an Arrow file by reading every record batch's header through the memory map (in
    ``Dataset.from_file``, in a map's workers, which reopen the whole input file, and for a map's output): each
    header maps the 64 KB (or a large folio) around it, so with a map's batches of 1,000 rows the whole file stays
    resident. Opened through ``mapped_pages.open_table`` (``release_datasets_opens``), none of it does."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets import table as datasets_table

    megabytes = 16
    path = tmp_path / "small-batches.arrow"
    rows = write_small_batches(path, megabytes)
    path.read_bytes()  # a file just written: its page cache is warm

    def read_all(filename):  # what datasets' own open does
        return pa.ipc.open_stream(pa.memory_map(filename)).read_all()

    def growth_opening() -> float:
        before = rss_file_mb()
        dataset = Dataset.from_file(str(path))
        grown = rss_file_mb() - before
        assert len(dataset) == rows and dataset[rows - 1]["text"].startswith(f"{megabytes * 64 - 1}:63 ")
        return grown

    monkeypatch.setattr(datasets_table, "_memory_mapped_arrow_table_from_file", read_all)
    kept = growth_opening()
    assert mapped_pages.release_datasets_opens()
    released = growth_opening()
    assert kept > 0.8 * megabytes and released < 3, (kept, released)
    opened, expected = mapped_pages.open_table(path), read_all(str(path))
    assert opened.equals(expected) and opened.schema.equals(expected.schema, check_metadata=True)  # the same table
