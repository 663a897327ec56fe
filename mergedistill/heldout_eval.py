"""Evaluation of teachers (and, through the same metrics, students) per language on held-out text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mergedistill import mlm_metrics
from mergedistill.teachers import Teacher, TeacherCard, load_card

EVAL_SEED = 1234


def load_teacher(spec: str | Path | TeacherCard, **kwargs) -> Teacher:
    if isinstance(spec, TeacherCard):
        return Teacher.load(spec, **kwargs)
    path = Path(spec)
    return Teacher.load(load_card(path) if path.suffix in (".yaml", ".yml") else path, **kwargs)


def teacher_eval_set(teacher: Teacher, texts: Sequence[str]) -> mlm_metrics.EvalSet:
    """Held-out sequences; special tokens AND unknown pieces are never scored (predicting <unk> for text
    the tokenizer cannot represent would look like skill)."""
    ids, covered = teacher.encode_covered(list(texts))
    return mlm_metrics.make_eval_set(texts, ids, set(teacher.tokenizer.all_special_ids), covered)


def teacher_metrics(teacher: Teacher, texts: Sequence[str], pll_paragraphs: int | None = None) -> dict:
    """acc, ce, pll_per_char, pll_per_word, fertility, unk_rate of ``teacher`` on ``texts``."""
    eval_set = teacher_eval_set(teacher, texts)
    tok = teacher.tokenizer
    out = mlm_metrics.masked_token_accuracy(
        teacher.model, eval_set, tok.mask_token_id, tok.pad_token_id, seed=EVAL_SEED
    )
    pll_set = eval_set if pll_paragraphs is None else teacher_eval_set(teacher, texts[:pll_paragraphs])
    out.update(mlm_metrics.pseudo_log_likelihood(teacher.model, pll_set, tok.mask_token_id, tok.pad_token_id))
    out.update(mlm_metrics.fertility(eval_set, tok.unk_token_id))
    return out


def evaluate_teachers(
    specs, languages=None, all_languages: bool = False, paragraphs: int = 100, corpus_cfg=None
) -> list[dict]:
    """One row per (teacher, language): the teacher's own languages, or ``languages``, or all of them."""
    from mergedistill.corpus import load_texts

    teachers = [load_teacher(spec) for spec in specs]
    every = sorted({lang for t in teachers for lang in t.languages})
    rows = []
    for teacher in teachers:
        langs = languages or (every if all_languages else teacher.languages)
        for lang in langs:
            texts = load_texts(lang, "valid", corpus_cfg, limit=paragraphs)
            rows.append(
                {
                    "teacher": teacher.name,
                    "lang": lang,
                    "params": teacher.num_parameters(),
                    **teacher_metrics(teacher, texts),
                }
            )
    return rows


def format_teacher_table(rows: list[dict]) -> str:
    lines = [
        "| teacher | language | masked acc | PLL/char | PLL/word | pieces/word | params |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['teacher']} | {r['lang']} | {r['acc']:.3f} | {r['pll_per_char']:.3f} | {r['pll_per_word']:.2f} | "
            f"{r['fertility']:.2f} | {r['params'] / 1e6:.2f} M |"
        )
    return "\n".join(lines)


def compare_student(
    student,
    teacher: Teacher,
    id_map,
    texts: Sequence[str],
    k: int = 8,
    pll_paragraphs: int = 30,
    seed: int = EVAL_SEED,
    student_tokenizer=None,
    glued_map=None,
    spaced_map=None,
) -> dict:
    """Student vs its teacher on held-out ``texts``: masked-token accuracy of both at the same positions, the
    student's PLL/char, top-1 agreement and KL(teacher‖student) over the teacher's top-k mapped to student ids
    (unified mode: as training maps targets, through ``glued_map`` and ``spaced_map`` where they apply).

    Routed mode (``student_tokenizer`` None): on the teacher's tokenization mapped to student ids; positions
    whose piece the student lacks are skipped. Unified mode (the student's own ``student_tokenizer``): each
    side reads its own pieces and only the character groups that training distills are masked and compared: one
    piece per side, or the student's ``▁X`` against the teacher's ``▁`` ``X`` (``mergedistill.align``), so both
    predict the same span; the student's PLL is on its own pieces."""
    import numpy as np

    from mergedistill.vocab.merge import SPECIAL_IDS

    id_map = np.array(id_map, dtype=np.int64)  # a writable copy of the (memory-mapped) id map
    t_set = teacher_eval_set(teacher, texts)
    if student_tokenizer is None:
        t_set = mlm_metrics.EvalSet(
            t_set.sequences,
            [sp | (id_map[s] < 0) for s, sp in zip(t_set.sequences, t_set.special)],
            t_set.chars,
            t_set.words,
        )
        s_set = mlm_metrics.EvalSet(
            [np.where(id_map[s] < 0, SPECIAL_IDS["unk"], id_map[s]) for s in t_set.sequences],
            t_set.special,
            t_set.chars,
            t_set.words,
        )
        t_masked = s_masked = mlm_metrics.eval_positions(t_set, seed, 0.15)
        targets = None
    else:
        s_set, t_set, s_masked, t_masked, targets = unified_eval_sets(student_tokenizer, teacher, texts, seed)
        targets.glued_map, targets.spaced_map = glued_map, spaced_map
    out = paired_scores(student, teacher, id_map, s_set, t_set, s_masked, t_masked, k, targets)
    first = slice(0, pll_paragraphs)
    pll_set = mlm_metrics.EvalSet(s_set.sequences[first], s_set.special[first], s_set.chars[first], s_set.words[first])
    t_pll_set = mlm_metrics.EvalSet(
        t_set.sequences[first], t_set.special[first], t_set.chars[first], t_set.words[first]
    )
    tok = teacher.tokenizer
    out["student_pll_per_char"] = mlm_metrics.pseudo_log_likelihood(
        student, pll_set, SPECIAL_IDS["mask"], SPECIAL_IDS["pad"]
    )["pll_per_char"]
    out["teacher_pll_per_char"] = mlm_metrics.pseudo_log_likelihood(
        teacher.model, t_pll_set, tok.mask_token_id, tok.pad_token_id
    )["pll_per_char"]
    return out


@dataclass
class UnifiedTargets:
    """Unified mode, per text: the teacher positions fed as [MASK] (whole chosen groups: a spaced group's bare
    ``▁`` too) and, at the queried ones, which map targets through the glued or spaced map (``cache.to_student``)."""

    hidden: list
    glued: list
    spaced: list
    glued_map: object = None
    spaced_map: object = None


def unified_eval_sets(student_tokenizer, teacher: Teacher, texts: Sequence[str], seed: int, prob: float = 0.15):
    """One aligned sequence per text (student and teacher pieces), the masked positions on both sides (teacher:
    where it is queried) and their ``UnifiedTargets``: ``prob`` of each text's groups that training distills
    (one piece per side, spaced), chosen deterministically."""
    import numpy as np

    from mergedistill.align import one_to_one, pack_aligned, served, spaced
    from mergedistill.data import aligned_paragraphs, teacher_bare
    from mergedistill.masking import example_rng
    from mergedistill.vocab.merge import SPECIAL_IDS

    tok = teacher.tokenizer
    length = teacher.card.max_length
    sequences = []
    for paragraph in aligned_paragraphs(list(texts), student_tokenizer, tok):
        packed = pack_aligned(
            [paragraph], length, length, (SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]), (tok.cls_token_id, tok.sep_token_id)
        )
        sequences.append(packed[0] if packed else None)
    kept = [i for i, seq in enumerate(sequences) if seq is not None]
    sequences = [sequences[i] for i in kept]
    # characters scored: up to the end of the last student piece in the (first) packed sequence
    offsets = student_tokenizer([texts[i] for i in kept], add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    pieces = [int((seq.student_groups >= 0).sum()) for seq in sequences]
    chars = [
        len(texts[i]) if n >= len(spans) else (spans[n - 1][1] if n else 0)
        for i, n, spans in zip(kept, pieces, offsets)
    ]
    words = [len(texts[i][:c].split()) for i, c in zip(kept, chars)]
    word_start = np.array(
        [p.startswith("▁") for p in student_tokenizer.convert_ids_to_tokens(range(len(student_tokenizer)))]
    )
    bare_of = teacher_bare(teacher.vocab)
    s_masked, t_masked, targets = [], [], UnifiedTargets([], [], [])
    for index, seq in enumerate(sequences):
        pairs, bare = one_to_one(seq.student_groups, seq.teacher_groups), bare_of[seq.teacher_ids]
        both = np.union1d(pairs, spaced(seq.student_groups, seq.teacher_groups, word_start[seq.student_ids], bare))
        count = min(len(both), max(1, int(round(len(both) * prob)))) if len(both) else 0
        chosen = example_rng(seed, "eval-unified", index).choice(both, size=count, replace=False) if count else both
        s_masked.append(np.isin(seq.student_groups, chosen))
        t_masked.append(served(seq.teacher_groups, np.intersect1d(chosen, pairs), np.setdiff1d(chosen, pairs), bare))
        targets.hidden.append(np.isin(seq.teacher_groups, chosen))
        targets.glued.append(np.zeros(len(seq.teacher_ids), bool))  # one queried piece per group, in order
        targets.glued[-1][t_masked[-1]] = ~word_start[seq.student_ids[s_masked[-1]]]
        targets.spaced.append(t_masked[-1] & np.isin(seq.teacher_groups, np.setdiff1d(chosen, pairs)))
    t_special = list(set(tok.all_special_ids))  # unknown pieces are never scored (see teacher_eval_set)
    s_set = mlm_metrics.EvalSet(
        [q.student_ids for q in sequences],
        [(q.student_groups < 0) | (q.student_ids == SPECIAL_IDS["unk"]) for q in sequences],
        chars,
        words,
    )
    t_set = mlm_metrics.EvalSet(
        [q.teacher_ids for q in sequences],
        [(q.teacher_groups < 0) | np.isin(q.teacher_ids, t_special) for q in sequences],
        chars,
        words,
    )
    return s_set, t_set, s_masked, t_masked, targets


def paired_scores(
    student, teacher: Teacher, id_map, s_set, t_set, s_masked, t_masked, k: int, targets: UnifiedTargets | None = None
) -> dict:
    """Accuracies, top-1 agreement, KL and the student's gold cross-entropy (nats per masked piece) at masked
    positions paired in row-major order (the i-th masked student position of a text with its i-th masked
    teacher position). ``targets`` (unified mode): the teacher's input is masked at ``targets.hidden`` and its
    predictions map to student ids as training's targets do (``cache.to_student``)."""
    import numpy as np
    import torch

    from mergedistill.cache import to_student
    from mergedistill.heads import masked_lm_logits
    from mergedistill.masking import pad_batch
    from mergedistill.vocab.merge import SPECIAL_IDS

    tok = teacher.tokenizer
    agree = total = 0
    kl_sum = t_correct = s_correct = s_nll = 0.0
    student.eval()
    for start in range(0, len(t_set.sequences), 32):
        rows = range(start, min(start + 32, len(t_set.sequences)))
        hidden = t_masked if targets is None else targets.hidden
        t_ids, t_attention = pad_batch(
            [np.where(hidden[i], tok.mask_token_id, t_set.sequences[i]) for i in rows], tok.pad_token_id
        )
        s_ids, s_attention = pad_batch(
            [np.where(s_masked[i], SPECIAL_IDS["mask"], s_set.sequences[i]) for i in rows], SPECIAL_IDS["pad"]
        )
        t_where, s_where = np.zeros_like(t_ids, dtype=bool), np.zeros_like(s_ids, dtype=bool)
        for r, i in enumerate(rows):
            t_where[r, : len(t_masked[i])] = t_masked[i]
            s_where[r, : len(s_masked[i])] = s_masked[i]
        with torch.inference_mode():
            t_logits = teacher.logits_at(
                torch.from_numpy(t_ids), torch.from_numpy(t_attention), torch.from_numpy(t_where)
            )
            s_logits, _ = masked_lm_logits(
                student, torch.from_numpy(s_ids), torch.from_numpy(s_attention), torch.from_numpy(s_where)
            )
        s_logp = torch.log_softmax(s_logits.float(), -1).cpu()  # t_logits and the gold ids are on the CPU
        gold_t = torch.from_numpy(np.concatenate([t_set.sequences[i][t_masked[i]] for i in rows]))
        gold_s = torch.from_numpy(np.concatenate([s_set.sequences[i][s_masked[i]] for i in rows]))
        t_top = t_logits.argmax(-1)
        t_correct += float((t_top == gold_t).sum())
        s_correct += float((s_logp.argmax(-1) == gold_s).sum())
        s_nll -= float(s_logp.gather(1, gold_s.long().unsqueeze(1)).sum())
        flags = {"teacher_input_ids": torch.from_numpy(t_ids), "teacher_positions": torch.from_numpy(t_where)}
        if targets is not None:  # glued and spaced rows, as in a training batch
            for key, per_text in (("teacher_glued", targets.glued), ("teacher_spaced", targets.spaced)):
                padded, _ = pad_batch([per_text[i].astype(np.int64) for i in rows], 0)
                flags[key] = torch.from_numpy(padded.astype(bool))
        maps = (targets.glued_map, targets.spaced_map) if targets is not None else ()

        def to_s(ids, vals):
            return to_student(ids, vals, id_map, {**flags, "attention_mask": None}, *maps)

        agree += int((to_s(t_top[:, None], t_top[:, None].float())[0][:, 0] == s_logp.argmax(-1)).sum())
        vals, ids = torch.topk(t_logits, k, -1)
        s_ids_k, t_vals_k = to_s(ids, vals)
        p = torch.nan_to_num(torch.softmax(t_vals_k, -1))
        q = s_logp.gather(1, s_ids_k.clamp(min=0))
        kl_sum += float((p * (torch.log(p.clamp_min(1e-30)) - q)).sum())
        total += len(gold_t)
    return {
        "teacher_acc": t_correct / max(total, 1),
        "student_acc": s_correct / max(total, 1),
        "agreement": agree / max(total, 1),
        "kl": kl_sum / max(total, 1),
        "student_mlm_ce": s_nll / max(total, 1),
        "masked": total,
    }


def latency_ms(
    model, vocab_size: int, batch_size: int, length: int = 128, repeats: int = 5, masked_fraction: float = 0.15
) -> float:
    """Median latency in milliseconds of a masked-LM call on random ids (same shape for every model compared): the
    encoder over ``batch_size`` x ``length`` tokens and the vocabulary projection at ``masked_fraction`` of them
    (``heads.masked_lm_logits``, how training and fill-mask use the model), so [batch, length, V] logits are never
    built. On the model's device (the run's ``device``; a GPU is synchronised before each clock reading)."""
    import time

    import torch

    from mergedistill.device import device_of, to_device
    from mergedistill.heads import masked_lm_logits

    device = device_of(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (batch_size, length), generator=generator)
    masked = torch.rand(batch_size, length, generator=generator) < masked_fraction
    ids, attention, masked = to_device((ids, torch.ones_like(ids), masked), device)

    def now():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times = []
    with torch.inference_mode():
        masked_lm_logits(model, ids, attention, masked)  # warm-up
        for _ in range(repeats):
            start = now()
            masked_lm_logits(model, ids, attention, masked)
            times.append(now() - start)
    return sorted(times)[len(times) // 2] * 1000


def routed_fill_mask(model, routed, pieces: Sequence[str], text: str, lang: str, top_k: int = 3) -> dict | None:
    """A fill-mask example for a routed student: ``text`` through the language's routed tokenizer (the ids the
    student was trained on), its middle piece replaced by [MASK]; the student's top-k pieces there. None when
    the text has no piece to mask or is longer than the student's positions."""
    import torch

    from mergedistill.device import device_of, to_device
    from mergedistill.pieces import keys_to_text
    from mergedistill.vocab import SPECIAL_IDS, SPECIAL_TOKENS

    ids = routed.encode(text, lang)
    candidates = [i for i, piece in enumerate(ids) if piece >= len(SPECIAL_TOKENS)]
    if not candidates or len(ids) > model.config.max_position_embeddings - 2:
        return None
    position = candidates[len(candidates) // 2]
    masked = list(ids)
    masked[position] = SPECIAL_IDS["mask"]
    with torch.inference_mode():
        logits = (
            model(**to_device({"input_ids": torch.tensor([masked])}, device_of(model)))
            .logits[0, position]
            .float()
            .cpu()
        )
    probs = torch.softmax(logits, -1)
    scores, best = torch.topk(probs, top_k)
    shown = [pieces[i] if i >= len(SPECIAL_TOKENS) else None for i in masked]
    shown[position] = ("▁" if pieces[ids[position]].startswith("▁") else "") + "[MASK]"
    return {
        "text": keys_to_text(shown),
        "source": text,
        "masked": pieces[ids[position]],
        "predictions": [{"token": pieces[i], "score": float(p)} for i, p in zip(best.tolist(), scores.tolist())],
    }
