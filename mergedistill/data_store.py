"""Packed training sequences out of core: memory-mapped Arrow files, built once per fingerprint.

A stream's sequences (``data.Stream.sequences``) are its paragraphs tokenized by the serving teacher and
packed (``masking.pack``). Here they are written to ``<data dir>/<fingerprint>/sequences.arrow`` (one
``list<int32>`` column) and read back through a memory map, so no stage holds the corpus in Python: the
tokenization is a batched ``datasets`` map over ``workers`` processes (with a progress bar), the packing
a single pass over its output in Arrow batches (packing is sequential: each paragraph goes after the one
before it), and the file is written batch by batch. The one-pass reads (hashing the text, tokenizing it,
packing) keep the files they read out of the process's resident memory (``mapped_pages``, ``file_batches``):
peak RSS does not grow with the corpus. The fingerprint covers the text (its content, not
its file names), the tokenizer and the packing, so the cache, train and baseline stages, and every rank
of a multi-process run, open the same file; the first to need it (rank 0) builds it. The sequences are
the ones the in-memory ``masking.pack`` makes, in the same order (tests/test_data_store.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergedistill import io, mapped_pages

FORMAT = "packed-sequences-v1"
READ_BATCH = 10_000  # texts per read (and hash update) while hashing the text
WRITE_BATCH = 8_192  # packed sequences per Arrow record batch written


PARALLEL_FROM = 20_000  # paragraphs: a smaller stream is tokenized in this process (a pool's start-up costs more)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def auto_workers(paragraphs: int) -> int:
    """``workers: 0``: the CPU count (at most 8) for a stream of ``PARALLEL_FROM`` paragraphs or more, else 1."""
    return default_workers() if paragraphs >= PARALLEL_FROM else 1


class ArrowSequences(Sequence):
    """A read-only list of packed sequences (int32 arrays, views into a memory-mapped Arrow file)."""

    def __init__(self, path: str | os.PathLike):
        from datasets import Dataset

        self.path = Path(path)
        table = Dataset.from_file(str(self.path)).data.table  # memory-mapped, nothing read yet
        self._values, self._offsets, starts = [], [], [0]
        for chunk in table.column("ids").chunks:
            self._values.append(chunk.values.to_numpy(zero_copy_only=True))
            self._offsets.append(chunk.offsets.to_numpy(zero_copy_only=True))
            starts.append(starts[-1] + len(chunk))
        self._starts = np.asarray(starts, dtype=np.int64)
        self.pieces = int(sum(int(o[-1]) - int(o[0]) for o in self._offsets))  # ids over all sequences

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        chunk = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - int(self._starts[chunk])
        offsets = self._offsets[chunk]
        return self._values[chunk][offsets[row] : offsets[row + 1]]


def texts_summary(texts) -> tuple[str, int, int]:
    """(sha256 of the texts in order, their characters, their number) for a list of str or a ``datasets``
    dataset with a ``text`` column, read in batches (a dataset is never loaded whole)."""
    digest, chars, count = hashlib.sha256(), 0, 0
    for batch in text_batches(texts):
        digest.update("\x00".join(batch).encode("utf-8", "surrogatepass") + b"\x01")
        chars += sum(map(len, batch))
        count += len(batch)
    return digest.hexdigest(), chars, count


def text_batches(texts):
    """The texts in lists of ``READ_BATCH``; a dataset's mapped pages are released after each (``mapped_pages``)."""
    if isinstance(texts, (list, tuple)):
        for start in range(0, len(texts), READ_BATCH):
            yield list(texts[start : start + READ_BATCH])
    else:
        files = mapped_pages.files_of(texts)
        for start in range(0, len(texts), READ_BATCH):
            batch = texts[start : start + READ_BATCH]["text"]
            mapped_pages.release(files)
            yield batch


def file_batches(files, column: str):
    """``column`` of the Arrow stream files ``files`` (a ``datasets`` map's output), batch by batch, in order: read
    into memory a batch at a time, not memory-mapped, so a pass over them holds one batch, not the files."""
    import pyarrow as pa

    for file in files:
        with pa.OSFile(str(file)) as source:
            for batch in pa.ipc.open_stream(source):
                yield batch.column(column)


def as_dataset(texts):
    from datasets import Dataset

    return Dataset.from_dict({"text": list(texts)}) if isinstance(texts, (list, tuple)) else texts


def pack_batches(batches, max_length: int, cls_id: int, sep_id: int):
    """``masking.pack`` over a stream of Arrow ``list<int32>`` arrays of tokenized paragraphs: yields the same
    packed sequences in the same order, while holding only the sequence being filled."""
    room = max_length - 2
    current: list[np.ndarray] = []
    length = 1  # the [CLS]
    cls, sep = np.array([cls_id], np.int32), np.array([sep_id], np.int32)

    def emit():
        parts = [cls]
        for chunk in current:
            parts += [chunk, sep]
        return np.concatenate(parts).astype(np.int32, copy=False)

    for array in batches:
        values = array.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        offsets = array.offsets.to_numpy()
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            for begin in range(start, end, room):
                size = min(room, end - begin)
                if length + size + 1 > max_length and length > 1:
                    yield emit()
                    current, length = [], 1
                current.append(values[begin : begin + size])
                length += size + 1
    if length > 1:
        yield emit()


def build_sequences(
    path: Path, texts, tokenizer, max_length: int, cls_id: int, sep_id: int, workers: int, desc: str
) -> int:
    """Tokenize ``texts`` (batched map over ``workers`` processes), pack, write ``path``; the sequence count."""
    import datasets
    import pyarrow as pa

    work = path.parent / "tokens"
    work.mkdir(parents=True, exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    try:
        tokens = as_dataset(texts).map(
            _tokenize,
            batched=True,
            batch_size=1000,
            num_proc=workers if workers > 1 else None,
            fn_kwargs={**_tokenize_kwargs(tokenizer), "release_files": mapped_pages.files_of(texts)},
            remove_columns=["text"] + [c for c in as_dataset(texts).column_names if c != "text"],
            cache_file_name=str(work / "tokens.arrow"),
            new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:16],
            features=datasets.Features({"ids": datasets.Sequence(datasets.Value("int32"))}),
            desc=desc,
        )
    finally:
        if not bars:
            datasets.disable_progress_bars()
    schema = pa.schema([pa.field("ids", pa.list_(pa.int32()))])
    count, pending = 0, []
    table_batches = file_batches([f["filename"] for f in tokens.cache_files], "ids")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for sequence in pack_batches(table_batches, max_length, cls_id, sep_id):
            pending.append(sequence)
            if len(pending) == WRITE_BATCH:
                writer.write_batch(_record_batch(pending, schema))
                count, pending = count + len(pending), []
        if pending or not count:
            writer.write_batch(_record_batch(pending, schema))
            count += len(pending)
    del tokens
    shutil.rmtree(work, ignore_errors=True)
    return count


def _tokenize(batch, tokenizer, backend=None, release_files=()):
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]`` as an Arrow table. ``backend``: a fast tokenizer's
    ``tokenizers`` backend without truncation or padding (``plain_backend``), called directly: what
    ``tokenizer(...)`` calls once it has turned those off, without the per-text Python lists of masks and type ids
    a ``BatchEncoding`` builds. ``release_files``: the text's Arrow files, whose pages this batch mapped
    (``mapped_pages``)."""
    import itertools

    import pyarrow as pa

    texts = batch["text"]
    if backend is None:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    mapped_pages.release(release_files)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))})


def _tokenize_kwargs(tokenizer) -> dict:
    backend = plain_backend(tokenizer)  # a worker then unpickles the backend alone, not the whole HF tokenizer
    return {"tokenizer": None if backend else tokenizer, "backend": backend}


def plain_backend(tokenizer):
    """A copy of a fast tokenizer's ``tokenizers`` backend without truncation or padding (None: not fast)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _record_batch(sequences: list[np.ndarray], schema):
    import pyarrow as pa

    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate(sequences).astype(np.int32) if sequences else np.zeros(0, np.int32)
    return pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))], schema=schema)


def stream_sequences(
    data_dir: str | os.PathLike,
    texts,
    tokenizer,
    tokenizer_fingerprint: str,
    max_length: int,
    cls_id: int,
    sep_id: int,
    workers: int = 0,
    desc: str = "tokenizing",
    log=lambda message: None,
) -> tuple[ArrowSequences, int]:
    """(the packed sequences of ``texts``, memory-mapped, and the texts' characters): opened from
    ``data_dir/<fingerprint>`` when built before, else built there first (temp dir, then rename)."""
    text_digest, chars, count = texts_summary(texts)
    fp = io.fingerprint(FORMAT, text_digest, tokenizer_fingerprint, max_length, cls_id, sep_id)
    final = Path(data_dir) / fp
    if (final / "info.json").is_file():
        log(f"[data] {desc}: opened {final / 'sequences.arrow'}")
        return ArrowSequences(final / "sequences.arrow"), chars
    with io.atomic_dir(final) as tmp:
        n = build_sequences(
            tmp / "sequences.arrow", texts, tokenizer, max_length, cls_id, sep_id, workers or auto_workers(count), desc
        )
        io.write_json_atomic(tmp / "info.json", {"paragraphs": count, "chars": chars, "sequences": n, "format": FORMAT})
    log(f"[data] {desc}: built {final / 'sequences.arrow'} ({count} paragraphs -> {n} sequences)")
    return ArrowSequences(final / "sequences.arrow"), chars


def read_info(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / "info.json").read_text(encoding="utf-8"))


def data_dir(cfg) -> Path:
    """Where the packed training sequences live (``mergedistill.data_store``), shared by every stage and rank."""
    return Path(cfg.output_dir) / "data"
