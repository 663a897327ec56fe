"""Structured experiment configs: one dataclass per pipeline stage, loaded with OmegaConf.

``load_config(path, overrides)`` merges a YAML file and ``key=value`` overrides onto the dataclass
schema. Unknown keys, wrong types and out-of-range values raise ``UserError`` naming the dotted key.
A section may define ``problems(self) -> list[(field, message)]`` for value checks; floats must be finite,
and ``RENAMED_KEYS`` (old field name -> new) so that an old key is refused with its new name.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mergedistill.device import device_problems
from mergedistill.errors import UserError

T = TypeVar("T")

DEMO_LANGUAGES = ["en", "de", "ru", "ja", "fr", "es", "zh"]


def _one_of(value: str, allowed: tuple[str, ...], name: str) -> list[tuple[str, str]]:
    return [] if value in allowed else [(name, f"must be one of {', '.join(allowed)}, got {value!r}")]


def _positive(section: Any, *names: str) -> list[tuple[str, str]]:
    return [(n, f"must be > 0, got {getattr(section, n)}") for n in names if getattr(section, n) <= 0]


def _non_negative(section: Any, *names: str) -> list[tuple[str, str]]:
    return [(n, f"must be >= 0, got {getattr(section, n)}") for n in names if getattr(section, n) < 0]


@dataclass
class CorpusConfig:
    """Where the text comes from. ``dir: ""`` means the corpus embedded in the repository."""

    dir: str = ""
    languages: List[str] = field(default_factory=lambda: list(DEMO_LANGUAGES))
    # Per-language user corpora: {lang: {path: "*.txt"|"*.jsonl", text_field: text}} or {lang: {hub: name, ...}}
    sources: Dict[str, Any] = field(default_factory=dict)
    max_train_paragraphs: Optional[int] = None  # per language; None = all
    max_eval_paragraphs: int = 300  # per language, for evaluation and teacher selection
    # user sources: documents are split into paragraphs at line breaks, and a paragraph longer than this is cut at
    # spaces into pieces of at most this many characters (0 = no cap); the embedded corpus is in paragraphs already
    # (the longest has 1,383 characters). A source may also stream: {hub: name, streaming: true, max_documents: N}
    # reads the first N documents as a stream into an Arrow file (so does {path: "*.jsonl", streaming: true})
    max_paragraph_chars: int = 2000

    def problems(self):
        out = [] if self.languages else [("languages", "must name at least one language")]
        if self.max_train_paragraphs is not None and self.max_train_paragraphs <= 0:
            out.append(("max_train_paragraphs", "must be > 0 or null"))
        if self.max_paragraph_chars < 0:
            out.append(("max_paragraph_chars", f"must be >= 0 (0 = no cap), got {self.max_paragraph_chars}"))
        return out + _positive(self, "max_eval_paragraphs")


@dataclass
class TeachersConfig:
    """Teacher cards (YAML files under teachers/) and where demo teachers are built."""

    cards: List[str] = field(default_factory=list)
    zoo_dir: str = "runs/zoo"  # where `teachers build` writes demo teachers (one dir per card)
    device: str = ""  # "" = the run-level `device`; or auto | cpu | cuda | cuda:N for the teachers alone

    def problems(self):
        out = [] if self.cards else [("cards", "must list at least one teacher card (e.g. teachers/demo-multi.yaml)")]
        return out + (device_problems(self.device) if self.device else [])


@dataclass
class SelectConfig:
    """Which teacher serves which language (or example)."""

    strategy: str = "static"  # static | score | min-ce | weighted
    assignment: Dict[str, Any] = field(default_factory=dict)  # static: lang -> teacher name (or list)
    candidates: List[str] = field(default_factory=list)  # teacher names to consider; empty = all
    top_m: int = 1
    fertility_penalty: float = 0.0
    unk_penalty: float = 0.0

    def problems(self):
        return _one_of(self.strategy, ("static", "score", "min-ce", "weighted"), "strategy") + _positive(self, "top_m")


@dataclass
class VocabConfig:
    """Merged student vocabulary."""

    max_size: Optional[int] = None  # cap on student pieces (specials included); None = no cap
    min_freq: float = 1e-6  # keep a piece iff its unigram probability in its teacher's languages >= this
    # teacher name -> its own min_freq (e.g. 0: keep every piece of a monolingual teacher); unlisted: min_freq
    min_freq_by_teacher: Dict[str, float] = field(default_factory=dict)
    unified_tokenizer: bool = True  # also build a single student tokenizer over the merged vocabulary

    def problems(self):
        out = _non_negative(self, "min_freq")
        out += [
            (f"min_freq_by_teacher.{name}", f"must be a finite number >= 0, got {value}")
            for name, value in self.min_freq_by_teacher.items()
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0)
        ]
        if self.max_size is not None and self.max_size < 8:
            out.append(("max_size", f"must be >= 8 (room for the special tokens) or null, got {self.max_size}"))
        return out


@dataclass
class DataConfig:
    """Tokenization, masking and language sampling for distillation."""

    # unified (default): the student reads the merged tokenizer's pieces, the exported AutoTokenizer's segmentation;
    # teacher targets only where a piece spans the same characters as one teacher piece, or as a teacher's bare word
    # marker and one piece (mergedistill/align.py). routed: each language by its teacher's tokenizer (MergeDistill's;
    # needs a language id at inference: mergedistill.vocab.load_routed_tokenizer)
    tokenization: str = "unified"
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word: bool = False
    # p_L proportional to n_L ** alpha, n_L = the language's training characters (see data.py)
    sampling_alpha: float = 0.7
    # lang -> factor on that language's sampling probability (renormalized): p_L ∝ w_L · n_L^α; unlisted = 1
    language_weights: Dict[str, float] = field(default_factory=dict)
    mask_seed: int = 1234

    def problems(self):
        out = _one_of(self.tokenization, ("routed", "unified"), "tokenization") + _positive(self, "max_length")
        if not 0 < self.mlm_probability < 1:
            out.append(("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}"))
        out += [
            (f"language_weights.{lang}", f"must be a finite number > 0, got {w}")
            for lang, w in self.language_weights.items()
            if not (math.isfinite(w) and w > 0)
        ]
        return out + _non_negative(self, "sampling_alpha")


@dataclass
class CacheConfig:
    """Teacher outputs: offline top-k cache, or teachers run online in the training loop."""

    mode: str = "offline"  # offline | online
    top_k: int = 8
    # sequences per teacher forward when computing targets (bounds teacher memory; the plan's batches are split)
    batch_size: int = 32

    def problems(self):
        return _one_of(self.mode, ("offline", "online"), "mode") + _positive(self, "top_k", "batch_size")


@dataclass
class StudentConfig:
    """BERT-style student over the merged vocabulary."""

    arch: str = "bert"  # bert | deberta-v2 (relative positions; learns context faster at small sizes)
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    max_position: int = 512
    dropout: float = 0.1
    init: str = "scratch"  # scratch | teacher
    init_teacher: str = ""  # teacher name when init == teacher
    # student layers 1, 2, ... stand for teacher layers s, 2s, ... (copied when init == teacher; paired by the
    # train.alpha_hidden/alpha_attn terms); null = teacher layers // student layers (mergedistill/layers.py)
    layer_stride: Optional[int] = None
    new_piece_init: str = "mean"  # mean | random: embeddings of pieces the init teacher does not own

    def problems(self):
        out = _positive(self, "layers", "hidden", "heads", "intermediate", "max_position")
        if self.layer_stride is not None and self.layer_stride <= 0:
            out.append(("layer_stride", f"must be > 0 or null, got {self.layer_stride}"))
        if self.hidden % max(self.heads, 1):
            out.append(("hidden", f"must be divisible by heads ({self.heads}), got {self.hidden}"))
        out += _one_of(self.arch, ("bert", "deberta-v2"), "arch")
        out += _one_of(self.init, ("scratch", "teacher"), "init")
        out += _one_of(self.new_piece_init, ("mean", "random"), "new_piece_init")
        if self.init == "teacher" and not self.init_teacher:
            out.append(("init_teacher", "must name a teacher when init is 'teacher'"))
        return out


@dataclass
class TrainConfig:
    """Distillation under DeepSpeed."""

    steps: int = 1000
    batch_size: int = 32  # micro batch per process
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 100  # linear from 0 (DeepSpeed's WarmupDecayLR: 0-2 all mean its shortest, 2 steps)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 1.0
    t2_scaling: bool = True  # multiply the soft loss by T^2 (Hinton et al.) so its gradient scale is T-independent
    adam_beta2: float = 0.999  # 0.98 steadies small post-warm-up students (RoBERTa's choice)
    alpha_kd: float = 1.0
    alpha_mlm: float = 1.0
    alpha_hidden: float = 0.0
    alpha_attn: float = 0.0
    hidden_loss: str = "mse"  # mse | cosine, for the alpha_hidden term (see mergedistill/internals.py)
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (bf16 where the device has it natively, else fp32)
    checkpoint_every: int = 200
    log_every: int = 10
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # extra keys merged into the DeepSpeed config

    def problems(self):
        out = _positive(self, "steps", "batch_size", "grad_accum", "lr", "temperature", "checkpoint_every", "log_every")
        if not 0.0 < self.adam_beta2 < 1.0:
            out.append(("adam_beta2", f"must be in (0, 1), got {self.adam_beta2}"))
        out += _non_negative(
            self, "warmup_steps", "weight_decay", "grad_clip", "alpha_kd", "alpha_mlm", "alpha_hidden", "alpha_attn"
        )
        if self.zero_stage not in (0, 1, 2, 3):
            out.append(("zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}"))
        if self.alpha_kd + self.alpha_mlm + self.alpha_hidden + self.alpha_attn <= 0:
            out.append(("alpha_kd", "at least one loss weight must be > 0"))
        return (
            out
            + _one_of(self.precision, ("fp32", "bf16", "fp16", "auto"), "precision")
            + _one_of(self.hidden_loss, ("mse", "cosine"), "hidden_loss")
        )


@dataclass
class EvalConfig:
    paragraphs: int = 200  # held-out paragraphs per language (masked-token scores)
    pll_paragraphs: int = 30  # the first of them also get PLL/char (one forward pass per piece)
    baseline: bool = True  # also train the same student with gold MLM only, for comparison
    speed_batch_sizes: List[int] = field(default_factory=lambda: [1, 32])

    def problems(self):
        return _positive(self, "paragraphs") + _non_negative(self, "pll_paragraphs")


@dataclass
class ExportConfig:
    fill_mask_examples: int = 3  # per language, in the report


@dataclass
class ExperimentConfig:
    """A whole MergeDistill run: corpus -> teachers -> select -> vocab [-> split, min-ce] -> cache -> train [+ baseline] -> eval -> export -> report."""

    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = 0
    # auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N; see mergedistill/device.py
    device: str = "auto"
    # processes that tokenize the training text into output_dir/data/ (memory-mapped Arrow, built once per
    # fingerprint; mergedistill/data_store.py); 0 = the CPU count (at most 8) for a language of 20,000
    # paragraphs or more, else 1. Outputs do not depend on it
    workers: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def problems(self):
        """Checks that span sections."""
        out = device_problems(self.device)
        if self.workers < 0:
            out.append(
                ("workers", f"must be >= 0 (0 = as many as the CPUs and the text size call for), got {self.workers}")
            )
        if (self.train.alpha_hidden > 0 or self.train.alpha_attn > 0) and self.cache.mode != "online":
            out.append(
                (
                    "train.alpha_hidden",
                    "the hidden/attention terms need the teachers' hidden states, which the top-k cache "
                    "does not store; set cache.mode: online (or both weights to 0)",
                )
            )
        unknown = sorted(set(self.data.language_weights) - set(self.corpus.languages))
        if unknown:
            out.append(
                (
                    f"data.language_weights.{unknown[0]}",
                    f"is not in corpus.languages ({', '.join(self.corpus.languages)}); remove it or add the language",
                )
            )
        if self.data.tokenization == "unified":
            if not self.vocab.unified_tokenizer:
                out.append(
                    (
                        "data.tokenization",
                        "'unified' reads the student's text with the merged vocabulary's unified tokenizer: "
                        "set vocab.unified_tokenizer: true (or use routed)",
                    )
                )
            if self.train.alpha_hidden > 0 or self.train.alpha_attn > 0:
                out.append(
                    (
                        "train.alpha_hidden",
                        "hidden/attention terms compare positions 1:1, which only routed tokenization gives: "
                        "set both to 0 or data.tokenization: routed",
                    )
                )
            if self.data.whole_word:
                out.append(
                    ("data.whole_word", "unified mode already masks whole aligned character groups: set it to false")
                )
        return out


def _problems(obj: Any, prefix: str) -> list[tuple[str, str]]:
    """Walk a dataclass tree: each section's own ``problems()`` plus a finiteness check on every float."""
    found: list[tuple[str, str]] = []
    if not dataclasses.is_dataclass(obj):
        return found
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, float) and not math.isfinite(value):
            found.append((key, f"must be a finite number, got {value}"))
        elif dataclasses.is_dataclass(value):
            found += _problems(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                found += _problems(item, f"{key}[{i}].")
    if hasattr(obj, "problems"):
        found += [(f"{prefix}{name}", msg) for name, msg in obj.problems()]
    return found


def _renamed(schema: type, dotted: str) -> str | None:
    """The new dotted name of a key its section lists in ``RENAMED_KEYS``, or None."""
    section, parts = schema, dotted.split(".")
    for part in parts[:-1]:
        section = typing.get_type_hints(section).get(part) if dataclasses.is_dataclass(section) else None
    new = getattr(section, "RENAMED_KEYS", {}).get(parts[-1])
    return ".".join([*parts[:-1], new]) if new else None


def from_dict(schema: Type[T], data: Any, source: str = "<config>", overrides: list[str] | None = None) -> T:
    """Build and validate a ``schema`` instance from plain data and ``key=value`` overrides."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data or {}))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise UserError(f"override {bad[0]!r}: expected key=value (e.g. train.steps=100)")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        new = _renamed(schema, key)
        if new:
            raise UserError(f"{source}: config key '{key}' was renamed to '{new}'; use the new name") from None
        reason = str(err).splitlines()[0]
        raise UserError(f"{source}: bad config key '{key}': {reason}") from None
    problems = _problems(obj, "")
    if problems:
        key, message = problems[0]
        raise UserError(f"{source}: config key '{key}' {message}")
    return obj


def load_config(path: str | Path, overrides: list[str] | None = None, schema: Type[T] = ExperimentConfig) -> T:
    """Load a YAML config file onto ``schema``; relative paths inside stay relative to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass the path of a YAML file (see experiments/)")
    import yaml  # a dependency of omegaconf

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of config sections, not {type(data).__name__}")
    return from_dict(schema, data, source=str(path), overrides=overrides)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))
