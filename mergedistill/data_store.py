"""Packed training sequences out of core: memory-mapped Arrow files, built once per fingerprint.

A stream's sequences (``data.Stream.sequences``) are its paragraphs tokenized by the serving teacher and
packed (``masking.pack``). Here they are written to ``<data dir>/<fingerprint>/sequences.arrow`` (one
``list<int32>`` column) and read back through a memory map, so no stage holds the corpus in Python: the
tokenization is a batched ``datasets`` map over ``workers`` processes (with a progress bar), the packing
a single pass over its output in Arrow batches (packing is sequential: each paragraph goes after the one
before it), and the file is written batch by batch. The one-pass reads (hashing the text, tokenizing it,
packing), opening a file and the random reads of batches keep the files they read out of the process's
resident memory (``mapped_pages``, ``file_batches``): peak RSS does not grow with the corpus. The fingerprint
covers the text (its content, not its file names), the tokenizer and the packing, so the cache, train and
baseline stages, and every rank of a multi-process run, open the same file; the first to need it (rank 0)
builds it. The sequences are the ones the in-memory ``masking.pack`` makes, in the same order
(tests/test_data_store.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
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


# random reads between two releases of the pages they mapped: a read maps the kernel's fault-around window (64 KB)
# or, where the kernel maps a whole large folio per fault (Linux 6.18), up to 2 MB of the page cache, for the
# sequence and again for its offsets, so a reader's resident file pages stay under ~RELEASE_EVERY x 4 MB, whatever
# the file's size (1,024 reads, the value until 2026-12, kept up to 2 GB: the whole of a 400 MB corpus's file). A
# release is one madvise call over the file's mapping (its ranges looked up once); released pages fault back in
# from the page cache when read again
RELEASE_EVERY = 4


class ArrowSequences(Sequence):
    """A read-only list of packed sequences (int32 arrays, views into a memory-mapped Arrow file); ``column``: one
    list column of a file of several (``ArrowAligned``), read as the numpy dtype it was stored from."""

    def __init__(self, path: str | os.PathLike, column: str = "ids", table=None):
        self.path = Path(path)
        self._reads = 0
        if table is None:
            table = mapped_pages.open_table(self.path)  # memory-mapped, its pages released
            mapped_pages.random_access([os.path.realpath(self.path)])  # batches read scattered sequences
        self._ranges = mapped_pages.mappings([os.path.realpath(self.path)])  # where it is mapped, for ``release``
        dtype = stored_dtype(table.schema.field(column))
        self._values, self._offsets, starts = [], [], [0]
        for chunk in table.column(column).chunks:
            self._values.append(chunk.values.to_numpy(zero_copy_only=True).view(dtype))
            self._offsets.append(chunk.offsets.to_numpy(zero_copy_only=True))
            starts.append(starts[-1] + len(chunk))
        self._starts = np.asarray(starts, dtype=np.int64)
        self.pieces = int(sum(int(o[-1]) - int(o[0]) for o in self._offsets))  # ids over all sequences
        mapped_pages.advise(self._ranges, "MADV_DONTNEED")  # what reading the offsets' ends mapped

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
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:  # bound the resident pages of random reads (``mapped_pages``)
            mapped_pages.advise(self._ranges, "MADV_DONTNEED")
        chunk = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - int(self._starts[chunk])
        offsets = self._offsets[chunk]
        return self._values[chunk][offsets[row] : offsets[row + 1]]


class ArrowAligned(Sequence):
    """Unified mode's aligned sequences (``align.AlignedSequence``) stored by ``build_aligned``: a read-only list of
    records whose fields are views into a memory-mapped Arrow file (one list column per numpy field)."""

    def __init__(self, path: str | os.PathLike):
        from mergedistill.align import AlignedSequence

        self.path = Path(path)
        table = mapped_pages.open_table(self.path)
        mapped_pages.random_access([os.path.realpath(self.path)])  # batches read scattered records
        self.fields = {name: ArrowSequences(path, name, table) for name in table.column_names}
        self._record = AlignedSequence
        self.teacher_sequences = self.fields["teacher_ids"]  # the stream's ``sequences``
        self.student_pieces = self.fields["student_ids"].pieces

    def __len__(self) -> int:
        return len(self.teacher_sequences)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._record(**{name: column[index] for name, column in self.fields.items()})


def stored_dtype(field) -> np.dtype:
    """The numpy dtype a list column was stored from (``encode_lists``; bool is stored as uint8)."""
    metadata = field.metadata or {}
    if b"numpy_dtype" in metadata:
        return np.dtype(metadata[b"numpy_dtype"].decode())
    return np.dtype(field.type.value_type.to_pandas_dtype())


def list_field(name: str, dtype) -> object:
    """The Arrow field of a list column holding numpy arrays of ``dtype`` (bool as uint8, so it reads zero-copy)."""
    import pyarrow as pa

    dtype = np.dtype(dtype)
    storage = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    return pa.field(name, pa.list_(pa.from_numpy_dtype(storage)), metadata={"numpy_dtype": dtype.str})


def encode_lists(arrays, dtype):
    """A list of arrays (or lists) as an Arrow list array of ``list_field(..., dtype)``'s type."""
    import pyarrow as pa

    dtype = np.dtype(dtype)
    storage = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(dtype, copy=False).view(storage)))


def decode_lists(array, dtype) -> list[np.ndarray]:
    """An Arrow list array from ``encode_lists`` back to its arrays of ``dtype`` (views into one buffer)."""
    values = array.values.to_numpy(zero_copy_only=False).view(np.dtype(dtype))
    offsets = array.offsets.to_numpy()
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


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
    for batch in _file_record_batches(files):
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
    import pyarrow as pa

    schema = pa.schema([pa.field("ids", pa.list_(pa.int32()))])
    fn_kwargs = {**_tokenize_kwargs(tokenizer), "release_files": mapped_pages.files_of(texts)}
    files = _map_to_files(path.parent / "tokens", texts, _tokenize, fn_kwargs, schema, workers, desc)
    count, pending = 0, []
    table_batches = file_batches(files, "ids")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for sequence in pack_batches(table_batches, max_length, cls_id, sep_id):
            pending.append(sequence)
            if len(pending) == WRITE_BATCH:
                writer.write_batch(_record_batch(pending, schema))
                count, pending = count + len(pending), []
        if pending or not count:
            writer.write_batch(_record_batch(pending, schema))
            count += len(pending)
    shutil.rmtree(path.parent / "tokens", ignore_errors=True)
    return count


def record_fields(record) -> dict[str, np.dtype]:
    """The numpy fields of a dataclass record (``align.AlignedSequence``) and their dtypes: what is stored of it."""
    out = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{type(record).__name__}.{field.name}: only numpy array fields can be stored in Arrow")
        out[field.name] = value.dtype
    return out


def build_aligned(
    path: Path,
    texts,
    student_tokenizer,
    teacher_tokenizer,
    maxima: tuple[int, int],
    specials: tuple[tuple[int, int], tuple[int, int]],
    workers: int,
    desc: str,
) -> int:
    """Unified mode: align ``texts``' two tokenizations (``data.aligned_paragraphs``, a batched map over ``workers``
    processes), pack them (``align.iter_pack_aligned``, one sequential pass), and write every numpy field of the
    records to ``path``, one list column each; the record count. The same records as ``data.aligned_sequences``."""
    import pyarrow as pa

    from mergedistill.align import AlignedSequence, iter_pack_aligned
    from mergedistill.data import aligned_paragraphs

    probe = aligned_paragraphs(next(iter(text_batches(texts)))[:64], student_tokenizer, teacher_tokenizer)
    parts = [
        np.result_type(*[np.asarray(p[k]) for p in probe if len(p[k])] or [np.int64]) for k in range(len(probe[0]))
    ]  # each paragraph element's dtype (the map's output columns part0, part1, ...)
    parts_schema = pa.schema([list_field(f"part{k}", dtype) for k, dtype in enumerate(parts)])
    files = _map_to_files(
        path.parent / "paragraphs",
        texts,
        _align,
        {
            "student": student_tokenizer,
            "teacher": teacher_tokenizer,
            "dtypes": [d.str for d in parts],
            "release_files": mapped_pages.files_of(texts),
        },
        parts_schema,
        workers,
        desc,
    )

    def paragraphs():
        for batch in _file_record_batches(files):
            columns = [decode_lists(batch.column(k), dtype) for k, dtype in enumerate(parts)]
            yield from zip(*columns)

    (s_max, t_max), (s_specials, t_specials) = maxima, specials
    count, pending, schema, fields = 0, [], None, None
    writer = sink = None
    try:
        for record in iter_pack_aligned(paragraphs(), s_max, t_max, s_specials, t_specials):
            if schema is None:
                fields = record_fields(record)
                schema = pa.schema([list_field(name, dtype) for name, dtype in fields.items()])
                sink = pa.OSFile(str(path), "wb")
                writer = pa.ipc.new_stream(sink, schema)
            pending.append(record)
            if len(pending) == WRITE_BATCH:
                writer.write_batch(_records_batch(pending, fields, schema))
                count, pending = count + len(pending), []
        if schema is None:  # no sequence at all (as in memory): the record's fields, as int64
            fields = {f.name: np.dtype(np.int64) for f in dataclasses.fields(AlignedSequence)}
            schema = pa.schema([list_field(name, dtype) for name, dtype in fields.items()])
            sink = pa.OSFile(str(path), "wb")
            writer = pa.ipc.new_stream(sink, schema)
        if pending or not count:
            writer.write_batch(_records_batch(pending, fields, schema))
            count += len(pending)
    finally:
        if writer is not None:
            writer.close()
        if sink is not None:
            sink.close()
    shutil.rmtree(path.parent / "paragraphs", ignore_errors=True)
    return count


def _records_batch(records, fields: dict, schema):
    import pyarrow as pa

    columns = [encode_lists([getattr(r, name) for r in records], dtype) for name, dtype in fields.items()]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _align(batch, student, teacher, dtypes, release_files=()):
    """``data.aligned_paragraphs`` of a batch of texts as an Arrow table: column ``part<k>`` holds each paragraph's
    k-th element."""
    import pyarrow as pa

    from mergedistill.data import aligned_paragraphs

    paragraphs = aligned_paragraphs(batch["text"], student, teacher)
    mapped_pages.release(release_files)
    return pa.table({f"part{k}": encode_lists([p[k] for p in paragraphs], dtype) for k, dtype in enumerate(dtypes)})


class ForkShared:
    """A map argument handed to forked worker processes without pickling it: the workers inherit ``_FORK_SHARED``
    (the parent's memory) and the pickle holds its key. A 250k-piece tokenizer otherwise costs its JSON in every
    task's pickle and seconds of rebuilding in every worker. Where workers are not forked (spawn, forkserver) the
    object itself is pickled. Registered from construction (before the map's pool forks) until ``close``."""

    def __init__(self, value):
        self.value, self.key = value, f"{os.getpid()}-{next(_FORK_SHARED_KEYS)}"
        _FORK_SHARED[self.key] = value

    def __reduce__(self):
        import multiprocess  # the multiprocessing that ``datasets`` maps use

        method = multiprocess.get_start_method(allow_none=True) or multiprocess.get_all_start_methods()[0]
        return (_fork_shared, (self.key,)) if method == "fork" else (_same, (self.value,))

    def close(self) -> None:
        _FORK_SHARED.pop(self.key, None)


_FORK_SHARED: dict[str, object] = {}
_FORK_SHARED_KEYS = itertools.count()


def _fork_shared(key: str):
    return _FORK_SHARED[key]


def _same(value):
    return value


def _map_to_files(work: Path, texts, function, fn_kwargs: dict, schema, workers: int, desc: str) -> list[str]:
    """``function`` as a batched ``datasets`` map over ``texts`` (``workers`` processes, a progress bar), its output
    (``schema``) written to Arrow files under ``work``: those files, in order. ``fn_kwargs`` reach forked workers
    without pickling (``ForkShared``)."""
    import datasets

    mapped_pages.release_datasets_opens()  # the map's workers reopen the input, and its output is opened
    work.mkdir(parents=True, exist_ok=True)
    dataset = as_dataset(texts)
    bars = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    shared = {name: ForkShared(value) for name, value in fn_kwargs.items()} if workers > 1 else {}
    try:
        output = dataset.map(
            function,
            batched=True,
            batch_size=1000,
            num_proc=workers if workers > 1 else None,
            fn_kwargs=shared or fn_kwargs,
            remove_columns=dataset.column_names,
            cache_file_name=str(work / "map.arrow"),
            new_fingerprint=hashlib.sha256(str(work).encode()).hexdigest()[:16],
            features=datasets.Features.from_arrow_schema(schema),
            desc=desc,
        )
    finally:
        for value in shared.values():
            value.close()
        if not bars:
            datasets.disable_progress_bars()
    return [f["filename"] for f in output.cache_files]


def _file_record_batches(files):
    import pyarrow as pa

    for file in files:
        with pa.OSFile(str(file)) as source:
            yield from pa.ipc.open_stream(source)


def _tokenize(batch, tokenizer, backend=None, release_files=()):
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]`` as an Arrow table. ``backend``: a fast tokenizer's
    ``tokenizers`` backend without truncation or padding (``plain_backend``), called directly: what
    ``tokenizer(...)`` calls once it has turned those off, without the per-text Python lists of masks and type ids
    a ``BatchEncoding`` builds. ``release_files``: the text's Arrow files, whose pages this batch mapped
    (``mapped_pages``)."""
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
    """A fast tokenizer's ``tokenizers`` backend without truncation or padding: itself when it has neither (as a
    ``transformers`` call without them leaves it), else a copy without them (None: not fast)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        return backend  # a copy of a 250k-piece vocabulary (through its JSON) takes seconds
    backend = Tokenizer.from_str(backend.to_str())
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


ALIGNED_FORMAT = "aligned-sequences-v1"


def stream_aligned(
    data_dir: str | os.PathLike,
    texts,
    student_tokenizer,
    teacher_tokenizer,
    teacher_fingerprint: str,
    maxima: tuple[int, int],
    specials: tuple[tuple[int, int], tuple[int, int]],
    workers: int = 0,
    desc: str = "aligning",
    log=lambda message: None,
) -> tuple[ArrowAligned, int]:
    """Unified mode's ``stream_sequences``: (the aligned sequences of ``texts``, memory-mapped, and the texts'
    characters), built once per fingerprint (the text, both tokenizers, the lengths, the specials and the record's
    fields) under ``data_dir``. ``maxima``: (student, teacher) sequence lengths; ``specials``: their (cls, sep)."""
    from mergedistill.align import AlignedSequence

    text_digest, chars, count = texts_summary(texts)
    student_fp = hashlib.sha256(student_tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    record = [f.name for f in dataclasses.fields(AlignedSequence)]
    fp = io.fingerprint(ALIGNED_FORMAT, text_digest, student_fp, teacher_fingerprint, maxima, specials, record)
    final = Path(data_dir) / fp
    if (final / "info.json").is_file():
        log(f"[data] {desc}: opened {final / 'aligned.arrow'}")
        return ArrowAligned(final / "aligned.arrow"), chars
    with io.atomic_dir(final) as tmp:
        n = build_aligned(
            tmp / "aligned.arrow",
            texts,
            student_tokenizer,
            teacher_tokenizer,
            maxima,
            specials,
            workers or auto_workers(count),
            desc,
        )
        info = {"paragraphs": count, "chars": chars, "sequences": n, "format": ALIGNED_FORMAT}
        io.write_json_atomic(tmp / "info.json", info)
    log(f"[data] {desc}: built {final / 'aligned.arrow'} ({count} paragraphs -> {n} aligned sequences)")
    return ArrowAligned(final / "aligned.arrow"), chars


def read_info(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / "info.json").read_text(encoding="utf-8"))


def data_dir(cfg) -> Path:
    """Where the packed training sequences live (``mergedistill.data_store``), shared by every stage and rank."""
    return Path(cfg.output_dir) / "data"
