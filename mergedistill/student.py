"""The student: a BERT-style masked-LM over the merged vocabulary.

From scratch it is a ``BertForMaskedLM`` (``student.arch: bert``) or a ``DebertaV2ForMaskedLM`` with
relative positions only (``student.arch: deberta-v2``; small models learn to use context in far fewer
steps) sized by the student config. From a teacher (``init: teacher``)
it takes the teacher's hidden size and copies (1-based) teacher layers s, 2s, 3s, ... (``mergedistill.layers``:
s = ``student.layer_stride``, unset = teacher layers // student layers, which keeps the top layer), the embeddings of every student piece the
teacher owns (through the id map), and initializes the other pieces' embeddings from the mean of the
teacher embeddings of the pieces the teacher's tokenizer splits them into (or randomly).
"""

from __future__ import annotations

import numpy as np

from mergedistill.errors import UserError
from mergedistill.layers import layer_stride, teacher_layers  # noqa: F401  (teacher_layers: the rule, re-exported)
from mergedistill.pieces import WORD_START, key_bytes
from mergedistill.vocab.merge import SPECIAL_IDS


def student_config(
    student_cfg, vocab_size: int, hidden: int | None = None, heads: int | None = None, intermediate: int | None = None
):
    from transformers import BertConfig, DebertaV2Config

    if getattr(student_cfg, "arch", "bert") == "deberta-v2":
        from mergedistill.tiny_models import DEBERTA_RELATIVE

        return DebertaV2Config(
            vocab_size=vocab_size,
            hidden_size=hidden or student_cfg.hidden,
            num_hidden_layers=student_cfg.layers,
            num_attention_heads=heads or student_cfg.heads,
            intermediate_size=intermediate or student_cfg.intermediate,
            max_position_embeddings=student_cfg.max_position,
            hidden_dropout_prob=student_cfg.dropout,
            attention_probs_dropout_prob=student_cfg.dropout,
            type_vocab_size=0,
            pad_token_id=SPECIAL_IDS["pad"],
            **DEBERTA_RELATIVE,
        )
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden or student_cfg.hidden,
        num_hidden_layers=student_cfg.layers,
        num_attention_heads=heads or student_cfg.heads,
        intermediate_size=intermediate or student_cfg.intermediate,
        max_position_embeddings=student_cfg.max_position,
        hidden_dropout_prob=student_cfg.dropout,
        attention_probs_dropout_prob=student_cfg.dropout,
        type_vocab_size=2,
        pad_token_id=SPECIAL_IDS["pad"],
    )


def build_student(student_cfg, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(student_config(student_cfg, vocab_size))


def _piece_text(key: str) -> str:
    text = key_bytes(key).decode("utf-8", errors="ignore")
    return (" " + text) if key.startswith(WORD_START) else text


def init_from_teacher(
    student_cfg,
    teacher_model,
    teacher_tokenizer,
    id_map: np.ndarray,
    pieces: list[str],
    new_piece_init: str = "mean",
    seed: int = 0,
):
    """A student initialized from a BERT-like teacher (see module docstring)."""
    import torch
    from transformers import BertForMaskedLM

    if getattr(student_cfg, "arch", "bert") != "bert":
        raise UserError(
            f"student.init=teacher builds a BERT student from a BERT/RoBERTa teacher; set student.arch: bert (got {student_cfg.arch})"
        )
    config = teacher_model.config
    if config.model_type not in ("bert", "roberta", "xlm-roberta", "camembert"):
        raise UserError(
            f"student.init_teacher: cannot copy layers from a {config.model_type} teacher; use a BERT/RoBERTa-style teacher or init: scratch"
        )
    stride = layer_stride(config.num_hidden_layers, student_cfg.layers, student_cfg.layer_stride)
    layers = teacher_layers(student_cfg.layers, stride)
    if layers[-1] >= config.num_hidden_layers:
        raise UserError(
            f"student.layers={student_cfg.layers} x student.layer_stride={stride} needs "
            f"{layers[-1] + 1} teacher layers; the teacher has {config.num_hidden_layers}"
        )
    torch.manual_seed(seed)
    student = BertForMaskedLM(
        student_config(
            student_cfg, len(pieces), config.hidden_size, config.num_attention_heads, config.intermediate_size
        )
    )
    t_base = getattr(teacher_model, teacher_model.base_model_prefix)
    s_base = student.bert
    with torch.no_grad():
        for s_index, t_index in enumerate(layers):
            s_base.encoder.layer[s_index].load_state_dict(t_base.encoder.layer[t_index].state_dict())
        t_emb, s_emb = t_base.embeddings, s_base.embeddings
        s_emb.LayerNorm.load_state_dict(t_emb.LayerNorm.state_dict())
        offset = (config.pad_token_id + 1) if config.model_type != "bert" else 0  # RoBERTa positions start after pad
        positions = t_emb.position_embeddings.weight[offset : offset + s_emb.position_embeddings.weight.shape[0]]
        s_emb.position_embeddings.weight[: positions.shape[0]] = positions
        s_emb.token_type_embeddings.weight[:] = t_emb.token_type_embeddings.weight[0]
        teacher_words = (
            t_emb.word_embeddings.weight.float().cpu()
        )  # a teacher on a GPU (in bf16) too; the student is built on the CPU
        student_words = s_emb.word_embeddings.weight
        owned = np.flatnonzero(np.asarray(id_map) >= 0)
        student_ids = np.asarray(id_map)[owned]
        student_words[torch.as_tensor(student_ids)] = teacher_words[torch.as_tensor(owned)]
        if new_piece_init == "mean":
            owned_set = set(student_ids.tolist())
            for sid, key in enumerate(pieces):
                if sid in owned_set or sid < len(SPECIAL_IDS):
                    continue
                sub = teacher_tokenizer(_piece_text(key), add_special_tokens=False)["input_ids"]
                if sub:
                    student_words[sid] = teacher_words[torch.as_tensor(sub)].mean(0)
        # MLM head transform from the teacher where shapes match (BERT: cls.predictions.transform)
        if config.model_type == "bert":
            student.cls.predictions.transform.load_state_dict(teacher_model.cls.predictions.transform.state_dict())
    return student


def configured_student(cfg, merged, teachers):
    """The student an experiment trains: from scratch, or (``student.init: teacher``) from ``init_teacher``,
    taken from ``teachers`` when loaded already. ``merged``: the merged vocabulary (``vocab.load_vocab``)."""
    if cfg.student.init == "teacher":
        from mergedistill.teachers import Teacher, load_cards

        cards = {c.name: c for c in load_cards(cfg)}
        if cfg.student.init_teacher not in cards:
            raise UserError(
                f"student.init_teacher: unknown teacher {cfg.student.init_teacher!r}; known: {', '.join(cards)}"
            )
        teacher = teachers.get(cfg.student.init_teacher) or Teacher.load(cards[cfg.student.init_teacher])
        id_map = merged.id_maps.get(teacher.name)
        if id_map is None:
            raise UserError(
                f"student.init_teacher={teacher.name} serves no language, so the vocabulary has no id map for it; pick a selected teacher"
            )
        return init_from_teacher(
            cfg.student, teacher.model, teacher.tokenizer, id_map, merged.pieces, cfg.student.new_piece_init, cfg.seed
        )
    return build_student(cfg.student, len(merged), cfg.seed)
