"""The ``mergedistill bistil`` config schema (one section per stage), loaded with ``mergedistill.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

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
    w_attn: float = 1.0
    w_hidden: float = 1.0
    w_logit: float = 0.0  # optional KD on the masked positions' MLM logits
    temperature: float = 1.0
    eval_every: int = 100
    eval_batches: int = 4  # per language, from the valid split
    max_paragraphs: Optional[int] = None  # per language; None = all of the train split

    def problems(self):
        out = _positive(
            self, "layer_stride", "steps", "batch_size", "max_length", "lr", "eval_every", "eval_batches", "temperature"
        )
        out += _non_negative(self, "warmup_steps", "weight_decay", "w_attn", "w_hidden", "w_logit")
        out += _one_of(self.layer_choice, ("stride", "bottom"), "layer_choice")
        if not 0 < self.mlm_probability < 1:
            out.append(("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}"))
        if self.w_attn + self.w_hidden + self.w_logit <= 0:
            out.append(("w_attn", "at least one of w_attn, w_hidden, w_logit must be > 0"))
        return out


@dataclass
class Phase2Config:
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    variants: List[str] = field(
        default_factory=lambda: list(VARIANTS)
    )  # students to train (the teacher is always evaluated)
    task_teacher: str = ""  # directory of an MMT already fine-tuned on the task; "" = fine-tune it here
    teacher_steps: int = 300
    teacher_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 128
    lr: float = 1e-3
    head_lr: float = 1e-3
    temperature: float = 2.0
    w_soft: float = 1.0
    w_gold: float = 0.0  # BiStil: soft targets only; "self-taught" uses gold labels alone
    w_attn: float = 0.0
    w_hidden: float = 0.0
    density: float = 0.08  # LT-SFT: fraction of the body's parameters that may change
    include_embeddings: bool = False  # word embeddings eligible for the sparse mask
    dense_steps: int = 300
    sparse_steps: int = 300
    max_train_examples: Optional[int] = None  # source-language training examples per task; None = all

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
        out += _non_negative(self, "w_soft", "w_gold", "w_attn", "w_hidden", "sparse_steps")
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
        if self.w_soft + self.w_gold <= 0:
            out.append(("w_soft", "w_soft or w_gold must be > 0"))
        return out


@dataclass
class BistilEvalConfig:
    max_test_examples: Optional[int] = None  # per language and task; None = the whole test split
    latency_batch_size: int = 32
    latency_repeats: int = 10
    target_ratio: float = 0.95  # the report marks the student OK when target accuracy >= this x teacher's
    min_speedup: float = 2.0
    min_gain_over_scratch: float = (
        0.05  # "far above scratch": BiStil − scratch >= this, and its 95 % bootstrap interval above 0
    )

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
