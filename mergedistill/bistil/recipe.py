"""BiStil as pipeline stages: ``bistil_stages(cfg)``, run by ``mergedistill.pipeline.run_stages``.

    trim ─> phase1 (+ phase1-scratch, phase1-random-init for those baselines) ──┐
        └─> phase2/<task>/teacher ─────────────────────────────────────────────┴─> phase2/<task>/<variant> ─> report

Each stage writes one directory under ``output_dir`` with a manifest, like the MergeDistill stages: its
fingerprint chains the config sections and the stages it declares it reads, so a re-run skips what is
current, an interrupted one redoes only the unfinished stages, and a changed input re-runs what follows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from functools import partial
from pathlib import Path

from mergedistill.bistil.schema import Phase2Config
from mergedistill.errors import UserError
from mergedistill.io import file_fingerprint, read_manifest, write_json_atomic
from mergedistill.pipeline import Stage, StageContext

# phase-1 kind -> (student initialisation, objective): BiStil copies the teacher's layers and distils; the
# paper's scratch baseline starts from random weights and learns bilingual masked-LM without the teacher;
# the random-init ablation starts from random weights and is distilled like BiStil.
PHASE1_KINDS = {"bistil": (False, "distil"), "scratch": (True, "mlm"), "random-init": (True, "distil")}
# what a variant's students depend on: all of phase2 except which tasks and variants exist
VARIANT_SECTIONS = tuple(
    f"phase2.{f.name}" for f in dataclasses.fields(Phase2Config) if f.name not in ("tasks", "variants")
)
TEACHER_SECTIONS = tuple(
    f"phase2.{k}" for k in ("teacher_steps", "teacher_lr", "batch_size", "max_length", "max_train_examples")
)


def log(message: str) -> None:
    """One line on stderr in one write (the pipeline's progress; stdout holds the report)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def phase1_kind(variant: str) -> str:
    """The phase-1 model a phase-2 variant starts from."""
    return variant if variant in PHASE1_KINDS else "bistil"


def phase1_name(kind: str) -> str:
    return "phase1" if kind == "bistil" else f"phase1-{kind}"


def teacher_name(task: str) -> str:
    return f"phase2/{task}/teacher"


def variant_name(task: str, variant: str) -> str:
    return f"phase2/{task}/{variant}"


def teacher_dir(cfg) -> Path:
    """The MMT checkpoint: ``cfg.teacher`` itself, or its card's source."""
    from mergedistill.teachers import check_local_checkpoint, load_card

    path = Path(cfg.teacher)
    if path.suffix in (".yaml", ".yml"):
        path = Path(load_card(path).source)
    check_local_checkpoint(path)
    return path


def teacher_fingerprint(cfg, log=log) -> str:
    """The fingerprint of the MMT's files; a card with a demo-zoo recipe (``build:``) is built first when it
    is missing or stale, so ``bistil run`` needs no separate step."""
    path = Path(cfg.teacher)
    if path.suffix in (".yaml", ".yml"):
        from mergedistill.teachers import load_card

        card = load_card(path)
        if card.build:
            from mergedistill.zoo import build_teacher

            build_teacher(card, seed=cfg.seed, corpus_dir=cfg.corpus_dir or None, log=log, device=_device(cfg))
    return file_fingerprint(teacher_dir(cfg))


def task_teacher_fingerprint(cfg) -> str:
    """The fingerprint of a task teacher given in ``phase2.task_teacher`` (fine-tuned outside BiStil)."""
    return file_fingerprint(cfg.phase2.task_teacher)


def _texts(cfg, lang: str, split: str, limit):
    from mergedistill.corpus import load_split

    dataset = load_split(lang, split, cfg.corpus_dir or None)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return list(dataset["text"])


def _load_mlm(directory, eager: bool = True):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    extra = {"attn_implementation": "eager"} if eager else {}
    return AutoModelForMaskedLM.from_pretrained(str(directory), **extra).eval(), AutoTokenizer.from_pretrained(
        str(directory)
    )


def _device(cfg):
    """Where phase 1, phase 2 and the evaluation run (``cfg.device``, see ``mergedistill.device``)."""
    from mergedistill.device import resolve_device

    return resolve_device(cfg.device)


def stage_trim(ctx: StageContext) -> dict:
    from mergedistill.vocab.trim import save_trimmed, trim_teacher

    c = ctx.cfg
    model, tokenizer = _load_mlm(teacher_dir(c))
    params_before, vocab_before = sum(p.numel() for p in model.parameters()), len(tokenizer)
    texts = [_texts(c, lang, "train", c.trim.max_paragraphs) for lang in (c.source, c.target)]
    model, trimmed, kept, _ = trim_teacher(model, tokenizer, texts, c.trim.theta)
    save_trimmed(ctx.out, model, trimmed, kept)
    ctx.log(f"[trim] {vocab_before} -> {len(kept)} pieces")
    return {
        "original_vocab": vocab_before,
        "kept_vocab": int(len(kept)),
        "theta": c.trim.theta,
        "params_before": int(params_before),
        "params_after": int(sum(p.numel() for p in model.parameters())),
    }


def stage_phase1(kind: str, ctx: StageContext) -> dict:
    from mergedistill.bistil.layer_reduction import make_student
    from mergedistill.bistil.phase1 import pack_language, train_phase1

    c, p, device, name = ctx.cfg, ctx.cfg.phase1, _device(ctx.cfg), phase1_name(kind)
    random_init, objective = PHASE1_KINDS[kind]
    teacher, tokenizer = _load_mlm(ctx.inputs["trim"])
    student = make_student(teacher, p.layer_stride, p.layer_choice, from_scratch=random_init, seed=c.seed).to(device)
    teacher.to(device)
    train = {
        lang: pack_language(tokenizer, _texts(c, lang, "train", p.max_paragraphs), p.max_length)
        for lang in (c.source, c.target)
    }
    valid = {
        lang: pack_language(tokenizer, _texts(c, lang, "valid", None), p.max_length) for lang in (c.source, c.target)
    }
    student, history = train_phase1(
        teacher if objective == "distil" else None,
        student,
        tokenizer,
        train,
        valid,
        p,
        seed=c.seed,
        log=lambda m: ctx.log(f"[{name}] {m.removeprefix('phase1: ')}"),
        objective=objective,
    )
    student.save_pretrained(ctx.out)
    tokenizer.save_pretrained(ctx.out)
    write_json_atomic(ctx.out / "history.json", history)
    return {
        "best": history[-1],
        "layers": student.config.num_hidden_layers,
        "teacher_layers": teacher.config.num_hidden_layers,
        "init": "random" if random_init else "teacher",
        "objective": objective,
    }


def task_data(cfg, task: str):
    """The task's source-language training examples."""
    from mergedistill.bistil.tasks import load_task

    return load_task(task, cfg.source, "train", cfg.phase2.max_train_examples, cfg.corpus_dir, partner=cfg.target)


def batches(cfg, task: str, tokenizer, steps: int, salt: str):
    """(``steps`` shuffled training batches of ``task``, its data); ``salt`` gives each use its own order."""
    from mergedistill.bistil.tasks import encode, train_batches

    data = task_data(cfg, task)
    return train_batches(
        encode(data, tokenizer, cfg.phase2.max_length),
        cfg.phase2.batch_size,
        steps,
        tokenizer.pad_token_id,
        seed=hash_seed(cfg.seed, task, salt),
    ), data


def stage_task_teacher(task: str, ctx: StageContext) -> dict:
    from transformers import AutoTokenizer

    from mergedistill.bistil.phase2 import train_task_teacher

    c, p = ctx.cfg, ctx.cfg.phase2
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.inputs["trim"]))
    train, data = batches(c, task, tokenizer, p.teacher_steps, "teacher")
    model = train_task_teacher(
        ctx.inputs["trim"], data.kind, data.num_labels, train, p.teacher_lr, seed=c.seed, device=_device(c)
    )
    model.save_pretrained(ctx.out)
    tokenizer.save_pretrained(ctx.out)
    return {"task": task}


def task_teacher_path(cfg, stage_dirs: dict, task: str) -> Path:
    """The fine-tuned task teacher: the one given in ``phase2.task_teacher``, else the stage's output."""
    return Path(cfg.phase2.task_teacher) if cfg.phase2.task_teacher else stage_dirs[teacher_name(task)]


def stage_variant(task: str, variant: str, ctx: StageContext) -> dict:
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from mergedistill.bistil.phase2 import train_student

    c, p = ctx.cfg, ctx.cfg.phase2
    teacher_path = task_teacher_path(c, ctx.inputs, task)
    phase1_dir = ctx.inputs[phase1_name(phase1_kind(variant))]
    tokenizer = AutoTokenizer.from_pretrained(str(phase1_dir))
    dense, data = batches(c, task, tokenizer, p.dense_steps, "student")
    sparse, _ = batches(c, task, tokenizer, p.sparse_steps, "student-sparse")
    cls = AutoModelForSequenceClassification if data.kind == "sequence" else AutoModelForTokenClassification
    teacher = cls.from_pretrained(str(teacher_path), attn_implementation="eager").to(_device(c)).eval()
    if teacher.config.vocab_size != len(tokenizer):
        raise UserError(
            f"phase2.task_teacher: {teacher_path} has {teacher.config.vocab_size} pieces, the trimmed vocabulary "
            f"{len(tokenizer)}; fine-tune the trimmed teacher ({ctx.inputs['trim']}) or leave task_teacher empty"
        )
    model, diff, head, losses = train_student(
        phase1_dir, teacher, data.kind, data.num_labels, variant, p, dense, sparse, seed=c.seed
    )
    diff.save(ctx.out / "diff.safetensors")
    save_file({k: v.contiguous() for k, v in head.items()}, str(ctx.out / "head.safetensors"))
    model.config.save_pretrained(ctx.out)
    write_json_atomic(ctx.out / "losses.json", losses)
    eligible = sum(torch_numel(shape) for _, _, shape in diff.entries.values())
    ctx.log(f"[{variant_name(task, variant)}] {diff.nnz:,} of {eligible:,} eligible body parameters changed")
    return {"task": task, "variant": variant, "changed": diff.nnz, "eligible": int(eligible), "phase1": str(phase1_dir)}


def stage_report(ctx: StageContext) -> dict:
    from mergedistill.bistil.task_metrics import evaluate_all
    from mergedistill.bistil.zero_shot_report import render

    results = evaluate_all(ctx.cfg, ctx.inputs, _device(ctx.cfg))
    # the time each stage took when it ran (its manifest's), in pipeline order
    results["times"] = {name: read_manifest(path)["seconds"] for name, path in ctx.inputs.items()}
    write_json_atomic(ctx.out / "results.json", results)
    (ctx.out / "report.md").write_text(render(results), encoding="utf-8")
    return {"tasks": {t: e["verdict"] for t, e in results["tasks"].items()}}


def bistil_stages(cfg, log=log) -> list[Stage]:
    """The stages of one BiStil config, in order: the phase-1 kinds its variants start from, and per task
    a task teacher (unless ``phase2.task_teacher`` gives one) and one stage per variant."""
    p = cfg.phase2
    kinds = dict.fromkeys(["bistil", *map(phase1_kind, p.variants)])
    stages = [
        Stage(
            "trim",
            stage_trim,
            sections=("trim", "source", "target", "corpus_dir"),
            external=partial(teacher_fingerprint, log=log),
            doc="trim the teacher's vocabulary to the two languages",
        )
    ]
    stages += [
        Stage(
            phase1_name(kind),
            partial(stage_phase1, kind),
            sections=("phase1", "seed"),
            after=("trim",),
            doc=f"bilingual {'masked-LM' if PHASE1_KINDS[kind][1] == 'mlm' else 'distillation'} into the student",
        )
        for kind in kinds
    ]
    for task in p.tasks:
        teacher = () if p.task_teacher else (teacher_name(task),)
        if not p.task_teacher:
            stages.append(
                Stage(
                    teacher_name(task),
                    partial(stage_task_teacher, task),
                    sections=TEACHER_SECTIONS + ("seed",),
                    after=("trim",),
                    doc=f"fine-tune the trimmed teacher on {task}",
                )
            )
        stages += [
            Stage(
                variant_name(task, variant),
                partial(stage_variant, task, variant),
                sections=VARIANT_SECTIONS + ("seed",),
                after=("trim", phase1_name(phase1_kind(variant)), *teacher),
                external=task_teacher_fingerprint if p.task_teacher else None,
                doc=f"distil {task} into the {variant} student",
            )
            for variant in p.variants
        ]
    stages.append(
        Stage(
            "report",
            stage_report,
            sections=("eval", "name"),
            after=tuple(s.name for s in stages),
            external=task_teacher_fingerprint if p.task_teacher else None,
            doc="zero-shot evaluation and report",
        )
    )
    return stages


def torch_numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def hash_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:4], "little")
