"""The ``mergedistill bistil`` config schema (one section per stage), loaded with ``mergedistill.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from mergedistill.bistil.tasks import TASK_NAMES
from mergedistill.config import _non_negative, _one_of, _positive
from mergedistill.device import device_problems

TASKS = ("topic", "keyterms")  # the default; TASK_NAMES lists all
VARIANTS = ("bistil", "dense", "self-taught", "scratch", "random-init")


@dataclass
class TrimConfig:
    theta: float = 1e-6  # keep a piece iff its unigram probability is >= theta in the source OR target corpus
    max_paragraphs: Optional[int] = None  # per language (train split) for the counts; None = all

    def problems(self):
        out = [] if 0 <= self.theta < 1 else [("theta", f"must be in [0, 1), got {self.theta}")]
        if self.max_paragraphs is not None and self.max_paragraphs <= 0:
            out.append(("max_paragraphs", "must be > 0 or null"))
        return out


@dataclass
class Phase1Config:
    layer_stride: int = 2  # s: the student keeps teacher layers s, 2s, 3s, ... (1-based)
    layer_choice: str = "stride"  # stride: layers s, 2s, ... | bottom: the first n/s layers
    steps: int = 400
    batch_size: int = 32  # one language per batch; languages alternate so each gets the same count
    max_length: int = 128
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    alpha_attn: float = 1.0  # attention-probability MSE to the paired teacher layers
    alpha_hidden: float = 1.0  # hidden-state MSE to the paired teacher layers
    alpha_kd: float = 0.0  # optional KD on the masked positions' MLM logits
    temperature: float = 1.0
    eval_every: int = 100
    eval_batches: int = 4  # per language, from the valid split
    max_paragraphs: Optional[int] = None  # per language; None = all of the train split
    # the loss weights were w_* before they took MergeDistill's train.alpha_* names
    RENAMED_KEYS: ClassVar[dict] = {"w_attn": "alpha_attn", "w_hidden": "alpha_hidden", "w_logit": "alpha_kd"}

    def problems(self):
        out = _positive(
            self, "layer_stride", "steps", "batch_size", "max_length", "lr", "eval_every", "eval_batches", "temperature"
        )
        out += _non_negative(self, "warmup_steps", "weight_decay", "alpha_attn", "alpha_hidden", "alpha_kd")
        out += _one_of(self.layer_choice, ("stride", "bottom"), "layer_choice")
        if not 0 < self.mlm_probability < 1:
            out.append(("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}"))
        if self.alpha_attn + self.alpha_hidden + self.alpha_kd <= 0:
            out.append(("alpha_attn", "at least one of alpha_attn, alpha_hidden, alpha_kd must be > 0"))
        return out


@dataclass
class Phase2Config:
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    # students to train (the teacher is always evaluated)
    variants: List[str] = field(default_factory=lambda: list(VARIANTS))
    task_teacher: str = ""  # directory of an MMT already fine-tuned on the task; "" = fine-tune it here
    teacher_steps: int = 300
    teacher_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 128
    lr: float = 1e-3
    # the students' new task head (the body learns at lr; the task teacher at teacher_lr throughout)
    head_lr: float = 1e-3
    temperature: float = 2.0
    alpha_kd: float = 1.0  # soft cross-entropy to the task teacher's predictions at temperature T
    alpha_gold: float = 0.0  # BiStil: soft targets only; "self-taught" uses gold labels alone
    alpha_attn: float = 0.0  # the phase-1 attention term, here too
    alpha_hidden: float = 0.0  # the phase-1 hidden-state term, here too
    density: float = 0.08  # LT-SFT: fraction of the body's parameters that may change
    include_embeddings: bool = False  # word embeddings eligible for the sparse mask
    dense_steps: int = 300
    sparse_steps: int = 300
    max_train_examples: Optional[int] = None  # source-language training examples per task; None = all
    # the loss weights were w_* before they took MergeDistill's train.alpha_* names
    RENAMED_KEYS: ClassVar[dict] = {
        "w_soft": "alpha_kd",
        "w_gold": "alpha_gold",
        "w_attn": "alpha_attn",
        "w_hidden": "alpha_hidden",
    }

    def problems(self):
        out = _positive(
            self,
            "teacher_steps",
            "teacher_lr",
            "batch_size",
            "max_length",
            "lr",
            "head_lr",
            "temperature",
            "dense_steps",
        )
        out += _non_negative(self, "alpha_kd", "alpha_gold", "alpha_attn", "alpha_hidden", "sparse_steps")
        if not 0 < self.density <= 1:
            out.append(("density", f"must be in (0, 1], got {self.density}"))
        out += [
            ("tasks", f"has unknown task {t!r}; choose from {', '.join(TASK_NAMES)}")
            for t in self.tasks
            if t not in TASK_NAMES
        ]
        out += [
            ("variants", f"has unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
            for v in self.variants
            if v not in VARIANTS
        ]
        if not self.tasks:
            out.append(("tasks", "must name at least one task"))
        if self.alpha_kd + self.alpha_gold <= 0:
            out.append(("alpha_kd", "alpha_kd or alpha_gold must be > 0"))
        return out


@dataclass
class BistilEvalConfig:
    max_test_examples: Optional[int] = None  # per language and task; None = the whole test split
    latency_batch_size: int = 32
    latency_repeats: int = 10
    target_ratio: float = 0.95  # the report marks the student OK when target accuracy >= this x teacher's
    min_speedup: float = 2.0
    # "far above scratch": BiStil − scratch >= this, and its 95 % bootstrap interval above 0
    min_gain_over_scratch: float = 0.05

    def problems(self):
        return _positive(self, "latency_batch_size", "latency_repeats", "target_ratio", "min_speedup") + _non_negative(
            self, "min_gain_over_scratch"
        )


@dataclass
class BistilConfig:
    """A BiStil run: one multilingual teacher, a source and a target language."""

    name: str = "bistil"
    output_dir: str = "runs/bistil"
    seed: int = 0
    teacher: str = "teachers/demo/bistil-mbert.yaml"  # a teacher card (YAML) or a masked-LM checkpoint directory
    source: str = "en"
    target: str = "de"
    corpus_dir: str = ""  # "" = the embedded corpus
    threads: int = 0  # torch threads (0 = leave torch's default)
    device: str = "auto"  # auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N: where phase 1, phase 2 and the evaluation run
    trim: TrimConfig = field(default_factory=TrimConfig)
    phase1: Phase1Config = field(default_factory=Phase1Config)
    phase2: Phase2Config = field(default_factory=Phase2Config)
    eval: BistilEvalConfig = field(default_factory=BistilEvalConfig)

    def problems(self):
        out = [] if self.source != self.target else [("target", f"must differ from source ({self.source})")]
        return out + _non_negative(self, "threads") + device_problems(self.device)
