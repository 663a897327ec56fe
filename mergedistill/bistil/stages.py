"""The BiStil stages as fingerprinted output directories under ``output_dir``:

trim/ -> phase1/ (+ phase1-scratch/, phase1-random-init/ for those baselines) -> phase2/<task>/{teacher,<variant>}/ -> report/.
Each is written atomically with a manifest; a stage whose fingerprint matches is skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from mergedistill.errors import UserError
from mergedistill.io import (
    atomic_dir,
    file_fingerprint,
    fingerprint,
    is_current,
    read_manifest,
    write_json_atomic,
    write_manifest,
)

STAGES = ("trim", "phase1", "phase2", "report")
# phase-1 kind -> (student initialisation, objective): BiStil copies the teacher's layers and distils; the
# paper's scratch baseline starts from random weights and learns bilingual masked-LM without the teacher;
# the random-init ablation starts from random weights and is distilled like BiStil.
PHASE1_KINDS = {"bistil": (False, "distil"), "scratch": (True, "mlm"), "random-init": (True, "distil")}


def phase1_kind(variant: str) -> str:
    """The phase-1 model a phase-2 variant starts from."""
    return variant if variant in PHASE1_KINDS else "bistil"


def log(message: str) -> None:
    print(f"[bistil] {message}", flush=True)


def teacher_dir(cfg) -> Path:
    """The MMT checkpoint: ``cfg.teacher`` itself, or its card's source; a card with a demo-zoo recipe
    (``build:``) is built first when it is missing or stale, so ``bistil run`` needs no separate step."""
    from mergedistill.teachers import check_local_checkpoint, load_card

    path = Path(cfg.teacher)
    if path.suffix in (".yaml", ".yml"):
        card = load_card(path)
        if card.build:
            from mergedistill.zoo import build_teacher

            build_teacher(card, seed=cfg.seed, corpus_dir=cfg.corpus_dir or None, log=log)
        path = Path(card.source)
    check_local_checkpoint(path)
    return path


def _stage(directory: Path, fp: str, build: Callable[[Path], dict], force: bool, name: str) -> dict:
    if not force and is_current(directory, fp):
        log(f"{name}: current, skipped ({directory})")
        return read_manifest(directory)
    log(f"{name}: running -> {directory}")
    start = time.perf_counter()
    with atomic_dir(directory) as tmp:
        info = build(tmp) or {}
        info["seconds"] = round(time.perf_counter() - start, 1)
        write_manifest(tmp, fp, stage=name, **info)
    return read_manifest(directory)


def _section(cfg, name):
    from mergedistill.config import to_dict

    return to_dict(cfg)[name]


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


class Run:
    """Paths and fingerprints of one BiStil config."""

    def __init__(self, cfg, force: tuple = ()):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.force = set(force)
        self.times: dict[str, float] = {}
        self._teacher: tuple[Path, str] | None = None

    @property
    def device(self):
        """Where phase 1, phase 2 and the evaluation run (``cfg.device``, see ``mergedistill.device``)."""
        from mergedistill.device import resolve_device

        return resolve_device(self.cfg.device)

    def teacher(self) -> tuple[Path, str]:
        """(MMT directory, its fingerprint), built and hashed once per run."""
        if self._teacher is None:
            start = time.perf_counter()
            path = teacher_dir(self.cfg)
            self._teacher = path, file_fingerprint(path)
            self.times.setdefault("teacher", round(time.perf_counter() - start, 1))
        return self._teacher

    # ---- trim
    def trim_fp(self) -> str:
        c = self.cfg
        return fingerprint("trim", self.teacher()[1], c.source, c.target, c.corpus_dir, _section(c, "trim"))

    def trim(self) -> dict:
        from mergedistill.bistil.trim import save_trimmed, trim_teacher

        c = self.cfg

        def build(tmp):
            model, tokenizer = _load_mlm(self.teacher()[0])
            params_before, vocab_before = sum(p.numel() for p in model.parameters()), len(tokenizer)
            texts = [_texts(c, lang, "train", c.trim.max_paragraphs) for lang in (c.source, c.target)]
            model, trimmed, kept, _ = trim_teacher(model, tokenizer, texts, c.trim.theta)
            save_trimmed(tmp, model, trimmed, kept)
            log(f"trim: {vocab_before} -> {len(kept)} pieces")
            return {
                "original_vocab": vocab_before,
                "kept_vocab": int(len(kept)),
                "theta": c.trim.theta,
                "params_before": int(params_before),
                "params_after": int(sum(p.numel() for p in model.parameters())),
            }

        return self._run("trim", self.out / "trim", self.trim_fp(), build)

    # ---- phase 1
    def phase1_fp(self, kind: str = "bistil") -> str:
        # BiStil's fingerprint keeps its pre-baseline form, so existing phase-1 outputs stay current
        return fingerprint(
            "phase1", self.trim_fp(), _section(self.cfg, "phase1"), self.cfg.seed, kind if kind != "bistil" else False
        )

    def phase1_dir(self, kind: str = "bistil") -> Path:
        return self.out / ("phase1" if kind == "bistil" else f"phase1-{kind}")

    def phase1(self, kind: str = "bistil") -> dict:
        from mergedistill.bistil.layers import make_student
        from mergedistill.bistil.phase1 import pack_language, train_phase1

        c, p = self.cfg, self.cfg.phase1
        self.trim()
        name = self.phase1_dir(kind).name
        random_init, objective = PHASE1_KINDS[kind]

        def build(tmp):
            teacher, tokenizer = _load_mlm(self.out / "trim")
            student = make_student(teacher, p.layer_stride, p.layer_choice, from_scratch=random_init, seed=c.seed).to(
                self.device
            )
            teacher.to(self.device)
            train = {
                lang: pack_language(tokenizer, _texts(c, lang, "train", p.max_paragraphs), p.max_length)
                for lang in (c.source, c.target)
            }
            valid = {
                lang: pack_language(tokenizer, _texts(c, lang, "valid", None), p.max_length)
                for lang in (c.source, c.target)
            }
            student, history = train_phase1(
                teacher if objective == "distil" else None,
                student,
                tokenizer,
                train,
                valid,
                p,
                seed=c.seed,
                log=lambda m: log(f"{name}: {m.removeprefix('phase1: ')}"),
                objective=objective,
            )
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / "history.json", history)
            return {
                "best": history[-1],
                "layers": student.config.num_hidden_layers,
                "teacher_layers": teacher.config.num_hidden_layers,
                "init": "random" if random_init else "teacher",
                "objective": objective,
            }

        return self._run(name, self.phase1_dir(kind), self.phase1_fp(kind), build)

    # ---- phase 2
    def task_data(self, task: str):
        from mergedistill.bistil.tasks import load_task

        c = self.cfg
        return load_task(task, c.source, "train", c.phase2.max_train_examples, c.corpus_dir, partner=c.target)

    def batches(self, task: str, tokenizer, steps: int, salt: str):
        from mergedistill.bistil.tasks import encode, train_batches

        c = self.cfg
        data = self.task_data(task)
        return train_batches(
            encode(data, tokenizer, c.phase2.max_length),
            c.phase2.batch_size,
            steps,
            tokenizer.pad_token_id,
            seed=hash_seed(c.seed, task, salt),
        ), data

    def teacher_fp(self, task: str) -> str:
        p = self.cfg.phase2
        given = file_fingerprint(p.task_teacher) if p.task_teacher else None
        keys = ("teacher_steps", "teacher_lr", "batch_size", "max_length", "max_train_examples")
        return fingerprint("task-teacher", self.trim_fp(), task, given, {k: getattr(p, k) for k in keys}, self.cfg.seed)

    def task_teacher(self, task: str) -> Path:
        from mergedistill.bistil.phase2 import train_task_teacher

        c, p = self.cfg, self.cfg.phase2
        if p.task_teacher:
            return Path(p.task_teacher)
        self.trim()

        def build(tmp):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.out / "trim"))
            batches, data = self.batches(task, tokenizer, p.teacher_steps, "teacher")
            model = train_task_teacher(
                self.out / "trim", data.kind, data.num_labels, batches, p.teacher_lr, seed=c.seed, device=self.device
            )
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            return {"task": task}

        self._run(f"phase2 {task} teacher", self.out / "phase2" / task / "teacher", self.teacher_fp(task), build)
        return self.out / "phase2" / task / "teacher"

    def variant_fp(self, task: str, variant: str) -> str:
        return fingerprint(
            "phase2",
            self.teacher_fp(task),
            self.phase1_fp(phase1_kind(variant)),
            _section(self.cfg, "phase2"),
            task,
            variant,
        )

    def phase2(self, task: str, variant: str) -> Path:
        from safetensors.torch import save_file
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        from mergedistill.bistil.phase2 import train_student

        c, p = self.cfg, self.cfg.phase2
        self.phase1(phase1_kind(variant))
        teacher_path = self.task_teacher(task)
        phase1_dir = self.phase1_dir(phase1_kind(variant))

        def build(tmp):
            tokenizer = AutoTokenizer.from_pretrained(str(phase1_dir))
            dense, data = self.batches(task, tokenizer, p.dense_steps, "student")
            sparse, _ = self.batches(task, tokenizer, p.sparse_steps, "student-sparse")
            cls = AutoModelForSequenceClassification if data.kind == "sequence" else AutoModelForTokenClassification
            teacher = cls.from_pretrained(str(teacher_path), attn_implementation="eager").to(self.device).eval()
            if teacher.config.vocab_size != len(tokenizer):
                raise UserError(
                    f"phase2.task_teacher: {teacher_path} has {teacher.config.vocab_size} pieces, the trimmed vocabulary "
                    f"{len(tokenizer)}; fine-tune the trimmed teacher ({self.out / 'trim'}) or leave task_teacher empty"
                )
            model, diff, head, losses = train_student(
                phase1_dir, teacher, data.kind, data.num_labels, variant, p, dense, sparse, seed=c.seed
            )
            diff.save(tmp / "diff.safetensors")
            save_file({k: v.contiguous() for k, v in head.items()}, str(tmp / "head.safetensors"))
            model.config.save_pretrained(tmp)
            write_json_atomic(tmp / "losses.json", losses)
            eligible = sum(torch_numel(shape) for _, _, shape in diff.entries.values())
            log(f"phase2 {task} {variant}: {diff.nnz:,} of {eligible:,} eligible body parameters changed")
            return {
                "task": task,
                "variant": variant,
                "changed": diff.nnz,
                "eligible": int(eligible),
                "phase1": str(phase1_dir),
            }

        directory = self.out / "phase2" / task / variant
        self._run(f"phase2 {task} {variant}", directory, self.variant_fp(task, variant), build)
        return directory

    # ---- report
    def report(self) -> Path:
        from mergedistill.bistil.report import render

        c = self.cfg
        for task in c.phase2.tasks:
            for variant in c.phase2.variants:
                self.phase2(task, variant)
        fp = fingerprint(
            "report",
            [self.variant_fp(t, v) for t in c.phase2.tasks for v in c.phase2.variants],
            [self.teacher_fp(t) for t in c.phase2.tasks],
            _section(c, "eval"),
        )

        def build(tmp):
            from mergedistill.bistil.evaluate import evaluate_all

            results = evaluate_all(self)
            results["times"] = dict(self.times)
            write_json_atomic(tmp / "results.json", results)
            (tmp / "report.md").write_text(render(results), encoding="utf-8")
            return {"tasks": {t: e["verdict"] for t, e in results["tasks"].items()}}

        self._run("report", self.out / "report", fp, build)
        return self.out / "report" / "report.md"

    def _run(self, name, directory, fp, build) -> dict:
        start = time.perf_counter()
        manifest = _stage(directory, fp, build, force=name.split(" ")[0] in self.force, name=name)
        self.times.setdefault(name, round(time.perf_counter() - start, 1))
        return manifest


def torch_numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def hash_seed(*parts) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:4], "little")
