"""Teacher targets for distillation: an offline top-k cache, or teachers run online.

Both give, for a batch of the plan, ``(topk_ids [n,k] student ids (-1 none), topk_logits [n,k] (-inf
none))`` at the masked positions in row-major order (unified mode: at the batch's ``teacher_positions``,
see ``mergedistill.data``). Offline values are stored as float16, so online
targets are rounded to float16 too: the two modes give bit-identical targets and hence the same loss.

The offline cache holds the targets of every planned micro-batch, in Arrow IPC chunk files of
``CHUNK`` batches (flat int32 ids + float16 logits + per-batch offsets). Each chunk is written to a temp
file and renamed, so a killed build loses at most the chunk in progress and a re-run continues with
the missing chunks; with several processes, rank r builds chunks r, r+W, ... (temp names per rank) and
rank 0 seals the cache (``finalize_cache``) once every rank is done. The manifest records the
fingerprint of everything the targets depend on (teachers, tokenizers, vocabulary, plan, masking, k)
and each chunk's sha256: a stale, truncated or corrupted cache is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mergedistill import faults, io
from mergedistill.errors import UserError
from mergedistill.vocab.merge import map_topk

CHUNK = 50
CHUNK_NAME = "chunk-{:05d}.arrow"


def to_student(
    ids,
    values,
    id_map: np.ndarray,
    batch: dict,
    glued_map: np.ndarray | None = None,
    spaced_map: np.ndarray | None = None,
):
    """Teacher top-k ids -> student ids. Unified mode: where no space precedes the student's piece
    (``teacher_glued``), through ``glued_map``: a WordPiece ``▁.`` there is the student's ``.``; at the ``X`` of a
    teacher's ``▁`` ``X`` that spans the student's ``▁X`` (``teacher_spaced``), through ``spaced_map``: ``X`` there
    is the student's ``▁X`` (no ``spaced_map``: no target there rather than a wrong one)."""
    import torch

    student_ids, student_values = map_topk(ids, values, id_map)
    for flag, other_map in (("teacher_glued", glued_map), ("teacher_spaced", spaced_map)):
        at = batch.get(flag)
        if at is None or (other_map is None and flag == "teacher_glued"):
            continue
        from mergedistill.data import teacher_view

        rows = at[teacher_view(batch)[2]][:, None]
        if other_map is None:
            other_ids, other_values = torch.full_like(student_ids, -1), torch.full_like(student_values, float("-inf"))
        else:
            other_ids, other_values = map_topk(ids, values, other_map)
        student_ids, student_values = (
            torch.where(rows, other_ids, student_ids),
            torch.where(rows, other_values, student_values),
        )
    return student_ids, student_values


def record_dropped(dropped: dict | None, key: str, topk_logits, student_ids) -> None:
    """Add to ``dropped[key] = [mass, positions]`` the share of each position's top-k probability (softmax over the k
    teacher logits, as the KD loss sees them) that falls on pieces outside the merged vocabulary (student id -1)."""
    import torch

    if dropped is None or student_ids.shape[0] == 0:
        return
    mass = (torch.softmax(topk_logits.float(), -1) * (student_ids < 0)).sum(-1)
    entry = dropped.setdefault(key, [0.0, 0])
    entry[0] += float(mass.double().sum())
    entry[1] += int(mass.shape[0])


def dropped_shares(dropped: dict) -> dict[str, float]:
    """``record_dropped`` totals -> mean dropped share of the top-k mass per ``lang@teacher``."""
    return {key: mass / count for key, (mass, count) in sorted(dropped.items()) if count}


def teacher_targets(
    teacher,
    id_map: np.ndarray,
    batch: dict,
    k: int,
    batch_size: int | None = None,
    glued_map: np.ndarray | None = None,
    dropped: dict | None = None,
    spaced_map: np.ndarray | None = None,
):
    """Top-k of ``teacher`` at the batch's masked positions, mapped to student ids, rounded to float16;
    ``batch_size`` sequences per teacher forward (``cache.batch_size``; None = the whole batch); ``dropped``:
    ``record_dropped`` totals, keyed ``lang@teacher``."""
    import torch

    from mergedistill.data import teacher_view

    ids, logits = teacher.topk(*teacher_view(batch), k, batch_size=batch_size)
    student_ids, student_logits = to_student(ids, logits, id_map, batch, glued_map, spaced_map)
    record_dropped(dropped, f"{batch.get('lang')}@{teacher.name}", logits, student_ids)
    return student_ids.long(), student_logits.to(torch.float16).float()


def mixed_targets(
    teachers: list,
    id_map: np.ndarray,
    batch: dict,
    k: int,
    batch_size: int | None = None,
    glued_map: np.ndarray | None = None,
    dropped: dict | None = None,
    spaced_map: np.ndarray | None = None,
):
    """``select.strategy: weighted`` (AvgCE-style): teachers sharing one tokenization are mixed position by
    position, each sequence with weights softmax(-CE) of the teachers' cross-entropy on its gold masked
    pieces; top-k of the mixture, mapped to student ids and rounded to float16 like ``teacher_targets``."""
    import torch

    from mergedistill.data import teacher_view
    from mergedistill.selection import mix_log_probs, mixture_weights

    teacher_ids, teacher_attention, masked = teacher_view(batch)
    gold = batch["teacher_labels"][masked]
    row_of = masked.nonzero()[:, 0]  # the sequence each masked position belongs to
    counts = torch.bincount(row_of, minlength=masked.shape[0]).clamp_min(1).double()
    log_probs, ce = [], []
    for teacher in teachers:
        lp = torch.log_softmax(teacher.logits_at(teacher_ids, teacher_attention, masked, batch_size), -1)
        nll = -lp.gather(1, gold[:, None]).squeeze(1).double()
        ce.append(torch.zeros(masked.shape[0], dtype=torch.float64).index_add_(0, row_of, nll) / counts)
        log_probs.append(lp)
    weights = torch.from_numpy(mixture_weights(torch.stack(ce, 1).numpy())).float()  # [B, teachers]
    mixed = mix_log_probs(log_probs, weights[row_of])
    values, ids = torch.topk(mixed, k=min(k, mixed.shape[-1]), dim=-1)
    student_ids, student_logits = to_student(ids, values, id_map, batch, glued_map, spaced_map)
    record_dropped(dropped, f"{batch.get('lang')}@{'+'.join(t.name for t in teachers)}", values, student_ids)
    return student_ids.long(), student_logits.to(torch.float16).float()


class OnlineTargets:
    """Teachers run in the training loop (frozen, inference mode)."""

    def __init__(
        self,
        teachers: Mapping[str, object],
        id_maps: Mapping[str, np.ndarray],
        k: int,
        batch_size: int | None = None,
        glued_maps: Mapping[str, np.ndarray] | None = None,
        spaced_maps: Mapping[str, np.ndarray] | None = None,
    ):
        self.teachers, self.id_maps, self.k, self.batch_size = dict(teachers), dict(id_maps), k, batch_size
        self.glued_maps = dict(glued_maps or {})  # unified mode: see ``to_student``
        self.spaced_maps = dict(spaced_maps or {})
        self.dropped: dict[str, list] = {}  # record_dropped totals of every call

    def __call__(self, index: int, batch: dict):
        mixture = batch.get("mixture") or ()
        if len(mixture) > 1:  # they share one tokenization, hence one id map
            return mixed_targets(
                [self.teachers[n] for n in mixture],
                self.id_maps[mixture[0]],
                batch,
                self.k,
                self.batch_size,
                self.glued_maps.get(mixture[0]),
                self.dropped,
                self.spaced_maps.get(mixture[0]),
            )
        name = mixture[0] if mixture else batch["teacher"]
        return teacher_targets(
            self.teachers[name],
            self.id_maps[name],
            batch,
            self.k,
            self.batch_size,
            self.glued_maps.get(name),
            self.dropped,
            self.spaced_maps.get(name),
        )


def sample_dropped(
    plan,
    teachers: Mapping[str, object],
    id_maps: Mapping[str, np.ndarray],
    k: int,
    n_batches: int,
    batch_size: int | None = None,
    glued_maps: Mapping[str, np.ndarray] | None = None,
    spaced_maps: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``dropped_shares`` over the plan's first ``n_batches`` batches (online mode has no cache to record it in)."""
    import torch

    online = OnlineTargets(teachers, id_maps, k, batch_size, glued_maps, spaced_maps)
    with torch.inference_mode():
        for index in range(min(n_batches, plan.n_batches)):
            online(index, plan.batch(index))
    return dropped_shares(online.dropped)


def cache_fingerprint(plan, teachers: Mapping[str, object], vocab_fingerprint: str, k: int) -> str:
    used = sorted({name for s in plan.streams for name in (s.mixture or (s.teacher,))})
    return io.fingerprint(
        "topk-cache",
        plan.fingerprint(),
        {n: (teachers[n].fingerprint(), teachers[n].tokenizer_fingerprint()) for n in used},
        vocab_fingerprint,
        k,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_chunk(
    path: Path, batches: list[tuple[np.ndarray, np.ndarray]], rank: int = 0, dropped: dict | None = None
) -> None:
    import pyarrow as pa

    offsets = np.cumsum([0] + [len(ids) for ids, _ in batches]).astype(np.int64)
    k = batches[0][0].shape[1] if batches and batches[0][0].ndim == 2 else 0
    ids = np.concatenate([ids.reshape(-1) for ids, _ in batches]).astype(np.int32) if batches else np.zeros(0, np.int32)
    logits = (
        np.concatenate([lg.reshape(-1) for _, lg in batches]).astype(np.float16) if batches else np.zeros(0, np.float16)
    )
    table = pa.table({"ids": pa.array(ids), "logits": pa.array(logits)})
    meta = {
        b"offsets": offsets.tobytes(),
        b"k": str(k).encode(),
        b"dropped": json.dumps(dropped or {}, sort_keys=True).encode(),
    }
    table = table.replace_schema_metadata(meta)
    tmp = path.with_suffix(f".rank{rank}.tmp")  # per rank: a rank left over from a killed run never shares one
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
        faults.point("chunk")  # the table is in the temp file, its footer not yet
    os.replace(tmp, path)


def prepare_cache(directory: str | Path, plan, k: int, fp: str) -> None:
    """Start or continue a build for ``fp``: chunks a build for other inputs left are deleted. With several
    ranks, rank 0 calls it before any rank writes a chunk (``build_cache`` does it itself for one process)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = io.read_manifest(directory)
    if state is not None and state.get("fingerprint") != fp:
        for stale in directory.glob("chunk-*.arrow"):  # left by a build for other inputs
            stale.unlink()
    io.write_manifest(directory, fp, complete=False, k=k, n_batches=plan.n_batches, chunk=CHUNK)


def build_cache(
    directory: str | Path,
    plan,
    teachers: Mapping[str, object],
    id_maps: Mapping[str, np.ndarray],
    k: int,
    fp: str,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    batch_size: int | None = None,
    glued_maps: Mapping[str, np.ndarray] | None = None,
    spaced_maps: Mapping[str, np.ndarray] | None = None,
) -> list[int]:
    """Write this rank's missing chunks of the plan's targets into ``directory`` (resumable); returns them.
    ``batch_size``: sequences per teacher forward (``cache.batch_size``); ``glued_maps``, ``spaced_maps``: unified
    mode (``to_student``)."""
    import torch
    from tqdm import tqdm

    directory = Path(directory)
    if world == 1:
        prepare_cache(directory, plan, k, fp)
    directory.mkdir(parents=True, exist_ok=True)
    online = OnlineTargets(teachers, id_maps, k, batch_size, glued_maps, spaced_maps)
    n_chunks = (plan.n_batches + CHUNK - 1) // CHUNK
    mine = [c for c in range(n_chunks) if c % world == rank and not (directory / CHUNK_NAME.format(c)).exists()]
    written = 0
    with torch.inference_mode():
        for chunk in tqdm(mine, desc="top-k cache", disable=not progress, unit="chunk"):
            rows, online.dropped = [], {}
            for index in range(chunk * CHUNK, min((chunk + 1) * CHUNK, plan.n_batches)):
                ids, logits = online(index, plan.batch(index))
                rows.append((ids.numpy(), logits.to(torch.float16).numpy()))
            _write_chunk(directory / CHUNK_NAME.format(chunk), rows, rank, online.dropped)
            written += 1
            if stop_after_chunks is not None and written >= stop_after_chunks:
                raise KeyboardInterrupt(f"stopped after {written} chunks (test hook)")
    return mine


def finalize_cache(directory: str | Path, fp: str, plan) -> dict:
    """After all ranks are done: check every chunk exists, record checksums, mark the cache complete."""
    directory = Path(directory)
    n_chunks = (plan.n_batches + CHUNK - 1) // CHUNK
    missing = [c for c in range(n_chunks) if not (directory / CHUNK_NAME.format(c)).exists()]
    if missing:
        raise UserError(f"{directory}: chunks {missing[:5]} missing; re-run `mergedistill cache build` to finish it")
    for partial in directory.glob("chunk-*.tmp"):  # a chunk a killed attempt was writing (maybe another rank's)
        partial.unlink(missing_ok=True)
    sums = {CHUNK_NAME.format(c): _sha256(directory / CHUNK_NAME.format(c)) for c in range(n_chunks)}
    nbytes = sum((directory / name).stat().st_size for name in sums)
    dropped = dropped_shares(_chunk_dropped(directory, n_chunks))
    io.write_manifest(
        directory,
        fp,
        complete=True,
        n_batches=plan.n_batches,
        chunk=CHUNK,
        checksums=sums,
        bytes=nbytes,
        dropped_topk_mass=dropped,
    )
    return {"bytes": nbytes, "chunks": n_chunks, "dropped_topk_mass": dropped}


def _chunk_dropped(directory: Path, n_chunks: int) -> dict:
    """The chunks' ``record_dropped`` totals, summed (each chunk stores its own in its schema metadata)."""
    import pyarrow as pa

    total: dict[str, list] = {}
    for c in range(n_chunks):
        with pa.memory_map(str(directory / CHUNK_NAME.format(c)), "r") as source:
            meta = pa.ipc.open_file(source).schema.metadata or {}
        for key, (mass, count) in json.loads(meta.get(b"dropped", b"{}")).items():
            entry = total.setdefault(key, [0.0, 0])
            entry[0] += mass
            entry[1] += count
    return total


class OfflineTargets:
    """Reads a finished cache; verifies fingerprint and checksums when opened."""

    def __init__(self, directory: str | Path, fp: str, verify: bool = True):
        self.directory = Path(directory)
        manifest = io.read_manifest(self.directory)
        rebuild = f"rebuild it with `mergedistill cache build` (or delete {self.directory})"
        if manifest is None:
            raise UserError(f"{self.directory}: no cache manifest; {rebuild}")
        if manifest.get("fingerprint") != fp:
            raise UserError(
                f"cache {self.directory} was built for different teachers, vocabulary or data (stale fingerprint); {rebuild}"
            )
        if not manifest.get("complete"):
            raise UserError(f"cache {self.directory} is incomplete (an interrupted build); {rebuild}")
        self.chunk = manifest["chunk"]
        self.checksums = manifest["checksums"]
        if verify:
            for name, expected in self.checksums.items():
                path = self.directory / name
                if not path.exists() or _sha256(path) != expected:
                    raise UserError(
                        f"{path}: cache chunk is missing, truncated or corrupted (checksum mismatch); {rebuild}"
                    )
        self._loaded: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}

    def _chunk(self, chunk: int):
        import pyarrow as pa

        if chunk not in self._loaded:
            if len(self._loaded) > 4:
                self._loaded.clear()
            path = self.directory / CHUNK_NAME.format(chunk)
            try:
                with pa.memory_map(str(path), "r") as source:
                    table = pa.ipc.open_file(source).read_all()
            except (pa.ArrowInvalid, OSError) as err:
                raise UserError(f"{path}: unreadable cache chunk ({err}); rebuild the cache") from None
            meta = table.schema.metadata
            offsets = np.frombuffer(meta[b"offsets"], dtype=np.int64)
            k = int(meta[b"k"])
            ids = table.column("ids").to_numpy()
            logits = table.column("logits").to_numpy()
            self._loaded[chunk] = (ids, logits, offsets, k)
        return self._loaded[chunk]

    def __call__(self, index: int, batch: dict | None = None):
        import torch

        ids, logits, offsets, k = self._chunk(index // self.chunk)
        row = index % self.chunk
        start, end = offsets[row] * k, offsets[row + 1] * k
        shape = (-1, k) if k else (0, 0)
        topk_ids = torch.from_numpy(ids[start:end].astype(np.int64).reshape(shape))
        topk_logits = torch.from_numpy(logits[start:end].reshape(shape).astype(np.float32))
        return topk_ids, topk_logits
