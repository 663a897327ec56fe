"""The distillation data: streams of packed teacher-tokenized text, and a deterministic batch plan.

A *stream* is one (language, teacher) pair: that language's training paragraphs tokenized by that
teacher (routed mode, MergeDistill's) and packed into sequences of at most ``max_length`` teacher ids.
Per-example teacher selection (min-ce) simply splits a language's paragraphs over several streams.

The *plan* fixes, for every micro-batch index, which stream and which examples it holds: a language is
drawn with p ∝ w·n^α (n = the language's training characters, a tokenizer-independent size; α =
``data.sampling_alpha``; w = its ``data.language_weights`` entry, default 1), then one of its streams in
proportion to their sizes (sequences), so neither a teacher's fertility nor a min-ce split over several
teachers moves a language's share (``sampling_probabilities``); each stream is
walked through a fresh seeded permutation per epoch. Masking happens in TEACHER id space with an RNG
seeded by (mask seed, stream, example, epoch), and the student input is the masked teacher sequence
mapped through the id map, so teacher and student positions align 1:1. ``batch(i)`` is therefore a
pure function of i: the offline cache, online teachers and a resumed run all see the same batches.
Packing (not bucketing) is what avoids padding: packed sequences are nearly all full.

Unified mode (``data.tokenization: unified``): the student reads the same text through the merged
tokenizer instead. Each sequence is then held in both tokenizations, aligned by character groups
(``mergedistill.align``); masking is per group on both sides; the gold labels are the student's own pieces
at every masked position, and teacher targets exist only at masked groups of one piece per side and at
spaced groups (the student's ``▁X``, the teacher's ``▁`` ``X``: queried at ``X``). The batch then also carries
``teacher_attention_mask``, ``teacher_positions`` (where the teacher is queried), ``kd_positions`` (the
student positions those targets belong to, in the same row-major order), ``teacher_glued`` and
``teacher_spaced`` (rows mapped through the vocabulary's glued or spaced maps, ``cache.to_student``);
``teacher_view`` and ``kd_rows`` read a batch of either mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mergedistill.errors import UserError
from mergedistill.io import fingerprint
from mergedistill.masking import example_rng, mask_sequence, pack, pad_batch
from mergedistill.vocab.merge import SPECIAL_IDS


@dataclass
class Stream:
    name: str  # "<lang>@<teacher>"
    lang: str
    teacher: str
    sequences: list[np.ndarray]  # packed teacher ids with the teacher's cls/sep
    id_map: np.ndarray  # teacher id -> student id (-1 dropped)
    mask_id: int
    special_ids: np.ndarray
    random_pool: np.ndarray  # teacher ids allowed as random replacements (kept, non-special)
    word_start: np.ndarray | None = None  # per teacher id: starts a word (whole-word masking)
    pad_id: int = 0
    mixture: tuple[
        str, ...
    ] = ()  # select.strategy=weighted: the teachers (sharing this tokenization) mixed per example
    aligned: list | None = (
        None  # unified mode: one align.AlignedSequence per sequence (``sequences`` = their teacher ids)
    )
    student_pool: np.ndarray | None = None  # unified mode: student ids allowed as random replacements
    student_word_start: np.ndarray | None = (
        None  # unified mode: per student id, the piece starts with ▁ (a space before it)
    )
    chars: int = (
        0  # characters of the stream's texts: the language's size for sampling (0 = unknown: sequences are used)
    )
    teacher_bare: np.ndarray | None = None  # unified mode: per teacher id, a bare word marker (▁): align.spaced

    def fingerprint(self) -> str:
        unified = (
            []
            if self.aligned is None
            else [
                "unified",
                "spaced",  # batches pair the spaced groups too (align.spaced)
                [a.student_ids.tobytes().hex()[:64] for a in self.aligned[:50]],
                int(getattr(self.aligned, "student_pieces", None) or sum(len(a.student_ids) for a in self.aligned)),
            ]
        )
        digest = fingerprint(
            self.name,
            [s.tobytes().hex()[:64] + str(len(s)) for s in self.sequences[:50]],
            len(self.sequences),
            int(getattr(self.sequences, "pieces", None) or sum(len(s) for s in self.sequences)),
            list(self.mixture),
            *unified,
        )
        return digest


def make_stream(
    lang: str,
    teacher,
    texts: list[str],
    id_map: np.ndarray,
    max_length: int,
    whole_word: bool = False,
    mixture: tuple[str, ...] = (),
    student_tokenizer=None,
    data_dir=None,
    workers: int = 0,
    log=lambda message: None,
) -> Stream:
    """Tokenize ``texts`` (a list of str, or a ``datasets`` dataset with a ``text`` column) with ``teacher`` (a
    mergedistill Teacher) and pack them. ``mixture``: several teachers that share ``teacher``'s tokenization serve
    the stream together (``select.strategy: weighted``). ``student_tokenizer`` (the merged vocabulary's unified
    tokenizer) switches to unified mode. ``data_dir``: the packed sequences (unified mode: the aligned ones) live there, in
    memory-mapped Arrow files built once per fingerprint by ``workers`` processes (``mergedistill.data_store``);
    None: in memory."""
    tokenizer = teacher.tokenizer
    if len(texts) == 0:
        raise UserError(
            f"no training text for language {lang!r} (teacher {teacher.name}); check corpus.languages and the corpus files"
        )
    length = min(max_length, teacher.card.max_length)
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    id_map = np.asarray(id_map)
    pool = np.setdiff1d(np.flatnonzero(id_map >= len(SPECIAL_IDS)), special)
    name = "+".join(mixture) if mixture else teacher.name
    aligned = student_pool = None
    chars = None
    if data_dir is not None and student_tokenizer is None:
        from mergedistill.data_store import stream_sequences

        sequences, chars = stream_sequences(
            data_dir,
            texts,
            tokenizer,
            teacher.tokenizer_fingerprint(),
            length,
            teacher.vocab.roles["cls"],
            teacher.vocab.roles["sep"],
            workers,
            f"{lang}@{name}",
            log,
        )
    elif student_tokenizer is not None and data_dir is not None:  # unified mode, stored like routed mode's
        from mergedistill.data_store import stream_aligned

        specials = ((SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]), (teacher.vocab.roles["cls"], teacher.vocab.roles["sep"]))
        aligned, chars = stream_aligned(
            data_dir,
            texts,
            student_tokenizer,
            tokenizer,
            teacher.tokenizer_fingerprint(),
            (max_length, length),
            specials,
            workers,
            f"{lang}@{name} (unified)",
            log,
        )
        sequences = aligned.teacher_sequences
    elif student_tokenizer is not None:
        texts = texts if isinstance(texts, (list, tuple)) else list(texts["text"])  # unified mode: in memory
        aligned = aligned_sequences(texts, student_tokenizer, tokenizer, max_length, length, teacher)
        sequences = [a.teacher_ids for a in aligned]
    else:
        texts = texts if isinstance(texts, (list, tuple)) else list(texts["text"])
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        sequences = pack(ids, length, teacher.vocab.roles["cls"], teacher.vocab.roles["sep"])
    if student_tokenizer is not None:
        student_pool = np.arange(len(SPECIAL_IDS), len(student_tokenizer), dtype=np.int64)
        student_word_start = np.array(
            [t.startswith("▁") for t in student_tokenizer.convert_ids_to_tokens(list(range(len(student_tokenizer))))]
        )
    word_start = None
    if whole_word:
        word_start = np.array([bool(k) and k.startswith("▁") for k in teacher.vocab.keys], dtype=bool)
    return Stream(
        f"{lang}@{name}",
        lang,
        name,
        sequences,
        id_map,
        teacher.vocab.roles["mask"],
        special,
        pool,
        word_start,
        teacher.vocab.roles.get("pad", 0),
        tuple(mixture),
        aligned,
        student_pool,
        student_word_start if student_tokenizer is not None else None,
        sum(len(t) for t in texts) if chars is None else chars,
        teacher_bare(teacher.vocab) if student_tokenizer is not None else None,
    )


def teacher_bare(vocab) -> np.ndarray:
    """Per teacher id: the piece is a bare word marker (key ``▁``; a SentencePiece ``▁``, a byte-level ``Ġ``)."""
    return np.array([key == "▁" for key in vocab.keys], dtype=bool)


def aligned_paragraphs(texts: list[str], student_tokenizer, teacher_tokenizer) -> list[tuple]:
    """Per text: (student ids, teacher ids, student groups, teacher groups), no special tokens."""
    from mergedistill.align import piece_ends, span_groups

    for which, tok in (("student (unified)", student_tokenizer), ("teacher", teacher_tokenizer)):
        if not getattr(tok, "is_fast", False):
            raise UserError(
                f"data.tokenization: unified needs fast tokenizers (character offsets); the {which} tokenizer "
                f"{type(tok).__name__} is not one: use routed"
            )
    texts = list(texts)
    student = student_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    teacher = teacher_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for s_ids, s_off, t_ids, t_off in zip(
        student["input_ids"], student["offset_mapping"], teacher["input_ids"], teacher["offset_mapping"]
    ):
        s_ends = piece_ends(s_off, student_tokenizer.convert_ids_to_tokens(s_ids))
        t_ends = piece_ends(t_off, teacher_tokenizer.convert_ids_to_tokens(t_ids))
        s_groups, t_groups = span_groups(s_ends, t_ends)
        out.append((s_ids, t_ids, s_groups, t_groups))
    return out


def aligned_sequences(texts, student_tokenizer, teacher_tokenizer, student_max: int, teacher_max: int, teacher) -> list:
    from mergedistill.align import pack_aligned

    return pack_aligned(
        aligned_paragraphs(texts, student_tokenizer, teacher_tokenizer),
        student_max,
        teacher_max,
        (SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]),
        (teacher.vocab.roles["cls"], teacher.vocab.roles["sep"]),
    )


def teacher_view(batch: dict):
    """(teacher input ids, its attention mask, bool positions to query) of a batch of either mode."""
    masked = batch.get("teacher_positions")
    return (
        batch["teacher_input_ids"],
        batch.get("teacher_attention_mask", batch["attention_mask"]),
        batch["labels"] != -100 if masked is None else masked,
    )


def kd_rows(batch: dict):
    """Among the student's masked rows (row-major), those with teacher targets; None = all (routed mode)."""
    kd = batch.get("kd_positions")
    return None if kd is None else kd[batch["labels"] != -100]


def sampling_probabilities(streams: list[Stream], alpha: float, language_weights: dict[str, float]) -> np.ndarray:
    """Per stream: its language's p ∝ w·n^α (n = the language's characters, or its sequences when a stream does not
    know its characters) shared among the language's streams in proportion to their sequences."""
    by_chars = all(s.chars > 0 for s in streams)
    langs = sorted({s.lang for s in streams})
    sizes = {lang: sum(s.chars if by_chars else len(s.sequences) for s in streams if s.lang == lang) for lang in langs}
    lang_p = np.array([language_weights.get(lang, 1.0) * float(sizes[lang]) ** alpha for lang in langs])
    lang_p /= lang_p.sum()
    sequences = {lang: sum(len(s.sequences) for s in streams if s.lang == lang) for lang in langs}
    return np.array(
        [lang_p[langs.index(s.lang)] * len(s.sequences) / sequences[s.lang] for s in streams], dtype=np.float64
    )


@dataclass
class DataPlan:
    streams: list[Stream]
    batch_size: int
    n_batches: int
    seed: int = 0
    alpha: float = 0.7
    mlm_probability: float = 0.15
    mask_seed: int = 1234
    language_weights: dict[str, float] = field(default_factory=dict)
    schedule: list[tuple[int, np.ndarray, int]] = field(
        default_factory=list, repr=False
    )  # (stream, example ids, epoch)

    def __post_init__(self):
        if not self.streams:
            raise UserError("no data streams: every language needs a teacher and text")
        self.probabilities = sampling_probabilities(self.streams, self.alpha, self.language_weights)
        cursors = [0] * len(self.streams)
        epochs = [0] * len(self.streams)
        orders = [self._order(i, 0) for i in range(len(self.streams))]
        pick = example_rng(self.seed, "streams").choice(len(self.streams), size=self.n_batches, p=self.probabilities)
        for stream_index in pick:
            n = len(self.streams[stream_index].sequences)
            take = min(self.batch_size, n)
            if cursors[stream_index] + take > n:  # next epoch: a new permutation
                epochs[stream_index] += 1
                orders[stream_index] = self._order(stream_index, epochs[stream_index])
                cursors[stream_index] = 0
            start = cursors[stream_index]
            self.schedule.append((int(stream_index), orders[stream_index][start : start + take], epochs[stream_index]))
            cursors[stream_index] += take

    def _order(self, stream_index: int, epoch: int) -> np.ndarray:
        return example_rng(self.seed, "order", self.streams[stream_index].name, epoch).permutation(
            len(self.streams[stream_index].sequences)
        )

    def fingerprint(self) -> str:
        weights = sorted(self.language_weights.items())  # empty (the default) keeps earlier plans' fingerprints
        return fingerprint(
            "plan",
            [s.fingerprint() for s in self.streams],
            self.batch_size,
            self.n_batches,
            self.seed,
            self.alpha,
            self.mlm_probability,
            self.mask_seed,
            *([weights] if weights else []),
            ["per-language", [s.chars for s in self.streams]],
        )  # the sampling rule and its sizes

    def served(self) -> dict[str, int]:
        """Examples each teacher serves over the whole plan."""
        out: dict[str, int] = {}
        for stream_index, examples, _ in self.schedule:
            teacher = self.streams[stream_index].teacher
            out[teacher] = out.get(teacher, 0) + len(examples)
        return out

    def served_by_language(self) -> dict[str, dict[str, int]]:
        """Examples each teacher (or mixture) serves per language over the whole plan: which teacher a language's
        evaluation and export go through (``selection.primary_teacher``)."""
        out: dict[str, dict[str, int]] = {}
        for stream_index, examples, _ in self.schedule:
            stream = self.streams[stream_index]
            counts = out.setdefault(stream.lang, {})
            counts[stream.teacher] = counts.get(stream.teacher, 0) + len(examples)
        return out

    def batch(self, index: int) -> dict:
        """The micro-batch ``index`` (see CONTRIBUTING.md: batch dict), as torch tensors."""
        import torch

        stream_index, examples, epoch = self.schedule[index % len(self.schedule)]
        stream = self.streams[stream_index]
        if stream.aligned is not None:
            return self._unified_batch(stream, examples, epoch)
        teacher_inputs, student_labels, teacher_labels = [], [], []
        for example in examples:
            seq = stream.sequences[int(example)].astype(np.int64)
            rng = example_rng(self.mask_seed, stream.name, int(example), epoch)
            special = np.isin(seq, stream.special_ids)
            word_start = stream.word_start[seq] if stream.word_start is not None else None
            masked_ids, masked = mask_sequence(
                seq, special, rng, self.mlm_probability, stream.mask_id, stream.random_pool, word_start
            )
            gold = stream.id_map[seq]
            masked &= gold >= 0  # a masked piece the student does not have cannot be a target
            teacher_inputs.append(np.where(masked, masked_ids, seq))
            student_labels.append(np.where(masked, gold, -100))
            teacher_labels.append(np.where(masked, seq, -100))
        teacher_ids, attention = pad_batch(teacher_inputs, stream.pad_id)
        labels, _ = pad_batch(student_labels, -100)
        gold_teacher, _ = pad_batch(teacher_labels, -100)
        student_ids = stream.id_map[teacher_ids]
        student_ids = np.where(student_ids < 0, SPECIAL_IDS["unk"], student_ids)
        student_ids[attention == 0] = SPECIAL_IDS["pad"]
        return {
            "input_ids": torch.from_numpy(student_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "teacher_input_ids": torch.from_numpy(teacher_ids),
            "teacher_labels": torch.from_numpy(
                gold_teacher
            ),  # gold teacher ids at the masked positions, -100 elsewhere
            "lang": stream.lang,
            "teacher": stream.teacher,
            "mixture": stream.mixture,
        }

    def _unified_batch(self, stream: Stream, examples, epoch: int) -> dict:
        import torch

        from mergedistill.align import in_groups, mask_aligned, one_to_one, served, spaced

        s_inputs, s_labels, t_inputs, t_labels, s_kd, t_kd, t_glued, t_spaced = [], [], [], [], [], [], [], []
        for example in examples:
            seq = stream.aligned[int(example)]
            rng = example_rng(self.mask_seed, stream.name, int(example), epoch)
            s_in, t_in, s_masked, t_masked, chosen = mask_aligned(
                seq,
                rng,
                self.mlm_probability,
                SPECIAL_IDS["mask"],
                stream.mask_id,
                stream.student_pool,
                stream.random_pool,
            )
            paired = chosen[in_groups(chosen, one_to_one(seq.student_groups, seq.teacher_groups))]  # chosen is sorted
            bare = (
                stream.teacher_bare[seq.teacher_ids] if stream.teacher_bare is not None else np.zeros(len(t_in), bool)
            )
            word_start = stream.student_word_start[seq.student_ids]
            spaced_groups = chosen[in_groups(chosen, spaced(seq.student_groups, seq.teacher_groups, word_start, bare))]
            s_inputs.append(s_in)
            t_inputs.append(t_in)
            s_labels.append(np.where(s_masked, seq.student_ids, -100))
            s_kd.append(in_groups(seq.student_groups, paired) | in_groups(seq.student_groups, spaced_groups))
            t_kd.append(served(seq.teacher_groups, paired, spaced_groups, bare))
            t_labels.append(np.where(t_kd[-1], seq.teacher_ids, -100))
            t_glued.append(np.zeros(len(t_in), bool))  # one piece per group, in group order on both sides:
            t_glued[-1][t_kd[-1]] = ~word_start[s_kd[-1]]  # no space before the student piece
            t_spaced.append(t_kd[-1] & in_groups(seq.teacher_groups, spaced_groups))
        student_ids, attention = pad_batch(s_inputs, SPECIAL_IDS["pad"])
        teacher_ids, teacher_attention = pad_batch(t_inputs, stream.pad_id)
        labels, _ = pad_batch(s_labels, -100)
        gold_teacher, _ = pad_batch(t_labels, -100)
        kd, _ = pad_batch([k.astype(np.int64) for k in s_kd], 0)
        tq, _ = pad_batch([k.astype(np.int64) for k in t_kd], 0)
        glued, _ = pad_batch([g.astype(np.int64) for g in t_glued], 0)
        spaced_at, _ = pad_batch([g.astype(np.int64) for g in t_spaced], 0)
        return {
            "input_ids": torch.from_numpy(student_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "teacher_input_ids": torch.from_numpy(teacher_ids.astype(np.int64)),
            "teacher_attention_mask": torch.from_numpy(teacher_attention),
            "teacher_labels": torch.from_numpy(gold_teacher),
            "teacher_positions": torch.from_numpy(tq.astype(bool)),
            "kd_positions": torch.from_numpy(kd.astype(bool)),
            "teacher_glued": torch.from_numpy(
                glued.astype(bool)
            ),  # targets there map through the vocabulary's glued_maps
            "teacher_spaced": torch.from_numpy(spaced_at.astype(bool)),  # through the vocabulary's spaced_maps
            "lang": stream.lang,
            "teacher": stream.teacher,
            "mixture": stream.mixture,
        }
