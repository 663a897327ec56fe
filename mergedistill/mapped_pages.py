"""Keep reads of memory-mapped Arrow files out of a process's resident memory.

``datasets`` memory-maps its Arrow files, and every page a read has touched stays mapped into the process and
counts in its RSS until the file is closed: a pass over an 800 MB corpus ends with 800 MB more RSS, although
those pages are page cache the kernel could drop. A touch maps more than the bytes read: the kernel maps the
page cache around the fault (a 64 KB window) or, on kernels that map a whole large folio per fault (Linux 6.18:
folios of up to 2 MB in the page cache of a file just written), the whole folio. A pass that reads a file once,
from start to end (hashing the text, tokenizing it, splitting it into paragraphs), calls ``release`` after each
batch: ``madvise(MADV_DONTNEED)`` on the process's read-only mappings of those files unmaps the pages it holds,
so its RSS stays one batch wide. The data is not touched (the mappings are read-only; a later read faults the
pages back in from the page cache). Opening a file reads every record batch's header through the map
(``open_table``: released after each); random reads (training batches) release after every few reads
(``data_store.RELEASE_EVERY``). Linux only (``/proc/self/maps``); elsewhere ``release`` does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

_libc = None


def files_of(dataset) -> list[str]:
    """The Arrow files behind a ``datasets`` dataset (data and indices; none for a list or an in-memory dataset)."""
    return [os.path.realpath(f["filename"]) for f in getattr(dataset, "cache_files", None) or []]


def mappings(files) -> list[tuple[int, int]]:
    """(start, end) of this process's read-only mappings of ``files`` (real paths), from ``/proc/self/maps``."""
    wanted = set(files)
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
        maps = handle.read()
    out = []
    for line in maps.splitlines() if any(f in maps for f in wanted) else ():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in wanted and "w" not in parts[1]:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end))
    return out


def _madvise(files, advice_name: str) -> int:
    """``madvise(advice)`` on this process's read-only mappings of ``files``; the bytes advised (0 off Linux)."""
    if not files or not sys.platform.startswith("linux"):
        return 0
    return advise(mappings(files), advice_name)


def advise(ranges, advice_name: str) -> int:
    """``madvise(advice)`` on address ranges from ``mappings`` (a reader that releases often looks them up once:
    they hold while its file stays mapped); the bytes advised (0 off Linux)."""
    global _libc
    advice = getattr(mmap, advice_name, None)
    if not ranges or not sys.platform.startswith("linux") or advice is None:
        return 0
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for start, end in ranges:
        if _libc.madvise(start, end - start, advice) == 0:
            advised += end - start
    return advised


def random_access(files) -> int:
    """Advise the kernel that ``files``' mappings are read at random (``MADV_RANDOM``: no read-ahead), so a batch
    of scattered sequences maps the pages it reads, not ~128 KB around each: the resident pages of training's
    random reads stay bounded by the batches read, not by the file's size."""
    return _madvise(files, "MADV_RANDOM")


def release(files) -> int:
    """Drop this process's pages of its read-only mappings of ``files`` (see the module docstring); the bytes of
    address space advised (0 off Linux, or when nothing of them is mapped)."""
    return _madvise(files, "MADV_DONTNEED")


def open_table(filename: str | os.PathLike):
    """An Arrow stream file as a memory-mapped ``pyarrow.Table``: what ``datasets`` reads to open one
    (``read_all`` over a memory map; the data is not copied), with the pages released after each record batch.
    Reading a batch's header touches the map at the start of that batch, which maps the fault-around window or
    the whole large folio there (module docstring): over a file whose page cache is warm (just written), a
    ``read_all`` leaves most of the file resident, once per process that opens it."""
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.memory_map(str(filename)))
    ranges = mappings([os.path.realpath(filename)]) if sys.platform.startswith("linux") else []
    batches = []
    for batch in reader:
        batches.append(batch)
        advise(ranges, "MADV_DONTNEED")
    return pa.Table.from_batches(batches, schema=reader.schema)


def release_datasets_opens() -> bool:
    """Make ``datasets`` open its memory-mapped Arrow files through ``open_table`` in this process (and the
    workers its maps fork): ``Dataset.from_file``, a map's output shards, and a shard unpickled in a map's
    worker, which reopens the whole input file. The tables are the same. False (nothing changed): this
    ``datasets`` opens its files another way."""
    try:
        from datasets import table
    except ImportError:
        return False
    if not callable(getattr(table, "_memory_mapped_arrow_table_from_file", None)):
        return False
    table._memory_mapped_arrow_table_from_file = open_table
    return True
