"""Teachers: any HuggingFace masked-LM checkpoint (hub name or local dir) with its tokenizer.

A ``TeacherCard`` (YAML under ``teachers/``) names the checkpoint, its languages and how to run it;
``Teacher.load`` checks a local checkpoint before loading (clear one-line errors for a missing
directory, a model without an MLM head, a tokenizer without a mask token) and exposes the normalized
piece view of its vocabulary and batched top-k outputs at requested positions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from mergedistill.errors import UserError
from mergedistill.io import file_fingerprint

# ISO 639-1 codes plus the regional variants the corpus layer uses.
KNOWN_LANGUAGES = set(
    "af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl gu ha he hi hr hu hy id is it ja jv "
    "ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr ms my ne nl no om or pa pl ps pt ro ru sa sd si sk sl so sq sr su sv sw "
    "ta te th tl tr ug uk ur uz vi xh yi zh zu".split()
) | {"pt-br", "zh-cn", "zh-tw", "en-gb", "en-us"}
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TeacherCard:
    """What a teacher is and how to run it."""

    name: str = ""
    source: str = ""  # hub name (e.g. bert-base-multilingual-cased) or a local directory
    languages: List[str] = field(default_factory=list)
    max_length: int = 512
    dtype: str = "auto"  # auto = bf16 on a CUDA device that supports it, else fp32
    family: str = ""  # optional: wordpiece | sentencepiece | bytelevel; checked against the tokenizer
    revision: Optional[str] = None  # hub revision to pin
    notes: str = ""
    build: Optional[Dict[str, Any]] = None  # demo-zoo recipe (mergedistill.zoo); absent for real checkpoints

    def problems(self):
        out = [] if self.name else [("name", "must be set")]
        out += [] if self.source else [("source", "must be a hub name or a local directory")]
        out += [] if self.languages else [("languages", "must list the teacher's languages (ISO 639-1 codes)")]
        for lang in self.languages:
            if lang not in KNOWN_LANGUAGES:
                out.append(("languages", f"has unknown language code {lang!r}; use ISO 639-1 codes such as en, de, ja"))
        if self.dtype not in DTYPES:
            out.append(("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}"))
        if self.family and self.family not in ("wordpiece", "sentencepiece", "bytelevel"):
            out.append(("family", f"must be wordpiece, sentencepiece or bytelevel, got {self.family!r}"))
        if self.max_length <= 2:
            out.append(("max_length", f"must be > 2, got {self.max_length}"))
        return out


def load_card(path: str | Path) -> TeacherCard:
    from mergedistill.config import load_config

    if not Path(path).is_file():
        raise UserError(f"{path}: teacher card not found; check the path (teachers.cards in the experiment config)")
    return load_config(path, schema=TeacherCard)


def looks_local(source: str) -> bool:
    """A source is a local directory when it exists, or when it is clearly a path (./, /, ~, runs/...)."""
    return (
        os.path.exists(source)
        or source.startswith((".", "/", "~"))
        or source.startswith("runs/")
        or source.count("/") > 1
    )


def check_local_checkpoint(directory: Path) -> None:
    if not directory.is_dir():
        raise UserError(
            f"{directory}: teacher directory not found; build it (mergedistill teachers build) or fix the card's source"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory}: no config.json; a teacher directory must come from save_pretrained")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(("ForMaskedLM", "ForPreTraining", "Generator")) for a in architectures):
        raise UserError(f"{directory}: model {architectures[0]} has no masked-LM head; use a *ForMaskedLM checkpoint")


FULLY_HASHED_BYTES = 64 << 20


def checkpoint_fingerprint(directory: str | Path) -> str:
    """A cheap identity of a local checkpoint directory: each file's name and size, plus the bytes of files up to
    64 MiB (config, tokenizer, small weights) and the modification time of larger ones (big weights). A checkpoint
    retrained or replaced in place changes it without hashing gigabytes; a mere copy may change it too (a re-run)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(directory)}\0{stat.st_size}\0".encode())
        digest.update(
            hashlib.sha256(file.read_bytes()).digest()
            if stat.st_size <= FULLY_HASHED_BYTES
            else str(stat.st_mtime_ns).encode()
        )
    return digest.hexdigest()


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Teacher:
    """A frozen masked-LM teacher: model, tokenizer, languages and the normalized view of its vocabulary."""

    def __init__(self, card: TeacherCard, model, tokenizer, device: str = "cpu"):
        from mergedistill.pieces import normalize_vocab

        self.card = card
        self.name = card.name
        self.languages = list(card.languages)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.vocab = normalize_vocab(tokenizer)
        if card.family and card.family != self.vocab.family:
            raise UserError(
                f"teacher {card.name}: card says family {card.family!r} but the tokenizer is {self.vocab.family!r}; fix the card"
            )
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls,
        card: TeacherCard | str | Path,
        device: str = "cpu",
        need_attentions: bool = False,
        zoo_dir: str | None = None,
    ) -> "Teacher":
        """Load from a card, a card path, or a checkpoint (local dir or hub name) given directly."""
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if isinstance(card, (str, Path)):
            path = Path(card)
            if path.suffix in (".yaml", ".yml"):
                card = load_card(path)
            else:
                card = TeacherCard(name=path.name, source=str(card), languages=["en"])
        source = card.source
        kwargs: dict[str, Any] = {}
        if card.revision:
            kwargs["revision"] = card.revision
        if looks_local(source):
            check_local_checkpoint(Path(source).expanduser())
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForMaskedLM.from_pretrained(
                source,
                dtype=resolve_dtype(card.dtype, device),
                attn_implementation="eager" if need_attentions else None,
                **kwargs,
            )
        except OSError as err:
            if looks_local(source):
                raise UserError(f"{source}: cannot load teacher ({str(err).splitlines()[0]})") from None
            raise UserError(
                f"teacher {card.name}: cannot load {source!r} from the HuggingFace hub ({str(err).splitlines()[0][:150]}); "
                "without internet, download it elsewhere and set the card's source to the local directory"
            ) from None
        except ValueError as err:
            raise UserError(f"{source}: not a masked-LM checkpoint ({str(err).splitlines()[0][:200]})") from None
        if tokenizer.mask_token_id is None:
            raise UserError(f"{source}: tokenizer has no mask token; a masked-LM teacher needs one (set mask_token)")
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"{source}: only fast (tokenizers) tokenizers are supported; save it with a tokenizer.json")
        rows = model.get_input_embeddings().num_embeddings
        for token in tokenizer.all_special_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id >= rows:
                raise UserError(
                    f"{source}: special token {token!r} has id {token_id} but the model has {rows} token embeddings; "
                    "the tokenizer does not match the model (save the checkpoint's own tokenizer, or resize_token_embeddings)"
                )
        model.to(device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return cls(card, model, tokenizer, device)

    # ----------------------------------------------------------------------------------------------
    def encode(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids with the family's special tokens, truncated to ``max_length`` (default: the card's)."""
        limit = min(max_length or self.card.max_length, self.card.max_length)
        return self.tokenizer(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]

    def encode_covered(self, texts: list[str], max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
        """``encode``, and per text how many leading characters its (possibly truncated) ids stand for: scores per
        character or word divide by the text actually scored, not the whole text."""
        limit = min(max_length or self.card.max_length, self.card.max_length)
        texts = list(texts)
        encoded = self.tokenizer(
            texts, truncation=True, max_length=limit, add_special_tokens=True, return_offsets_mapping=True
        )
        covered = []
        for text, offsets in zip(texts, encoded["offset_mapping"]):
            end = max((stop for _, stop in offsets), default=0)
            covered.append(
                len(text) if not text[end:].strip() else end
            )  # untruncated: the whole text, trailing space too
        return encoded["input_ids"], covered

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def logits_at(self, input_ids, attention_mask, positions, batch_size: int | None = None):
        """Full-vocabulary logits (float32) at the True entries of ``positions`` [B,T], row-major order.

        The vocabulary projection runs at those positions only (``heads.masked_lm_logits``): for a small
        teacher with a large vocabulary it is most of the forward's cost. ``batch_size``: at most that many
        sequences per forward (``cache.batch_size``, bounds the teacher's memory); None = all B at once."""
        import torch

        from mergedistill.heads import masked_lm_logits

        step = batch_size or max(1, input_ids.shape[0])
        parts = []
        with torch.inference_mode():
            for start in range(0, max(1, input_ids.shape[0]), step):
                rows = slice(start, start + step)  # moved to the model's device in masked_lm_logits
                logits, _ = masked_lm_logits(self.model, input_ids[rows], attention_mask[rows], positions[rows])
                parts.append(logits.float().cpu())
            return parts[0] if len(parts) == 1 else torch.cat(parts)

    def topk(self, input_ids, attention_mask, positions, k: int, batch_size: int | None = None):
        """(ids int64 [n,k], logits float32 [n,k]) of the k most likely pieces at each True position."""
        import torch

        rows = self.logits_at(input_ids, attention_mask, positions, batch_size)
        values, ids = torch.topk(rows, k=min(k, rows.shape[-1]), dim=-1)
        return ids, values

    def fingerprint(self) -> str:
        """sha256 over the checkpoint's config, weights and tokenizer files (computed once)."""
        if self._fingerprint is None:
            directory = Path(self.card.source)
            digest = hashlib.sha256()
            if directory.is_dir():
                for file in sorted(directory.iterdir()):
                    if file.is_file() and file.name != "manifest.json":
                        digest.update(file.name.encode())
                        digest.update(hashlib.sha256(file.read_bytes()).digest())
            else:  # hub checkpoint: the resolved commit identifies it
                digest.update(str(getattr(self.model.config, "_commit_hash", None) or self.card.source).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def tokenizer_fingerprint(self) -> str:
        """sha256 of the tokenizer's segmentation. The backend's truncation and padding settings are left out:
        ``transformers`` sets them on each call (``truncation=True, max_length=...``), so they depend on what
        ran before, and a cache built after tokenizing would not match the same teacher freshly loaded."""
        state = json.loads(self.tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------- an experiment's teachers
def load_cards(cfg) -> list[TeacherCard]:
    """The cards of ``cfg.teachers.cards``, in order; names must be unique."""
    cards = [load_card(path) for path in cfg.teachers.cards]
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise UserError(f"teachers.cards: two cards share a name ({', '.join(names)}); names must be unique")
    return cards


def teachers_device(cfg):
    """Where an experiment's teachers run (and adapted teachers train): ``teachers.device``, else ``device``."""
    from mergedistill.device import resolve_device

    return resolve_device(cfg.teachers.device or cfg.device, "teachers.device" if cfg.teachers.device else "device")


def load_teachers(cfg, names=None) -> dict[str, Teacher]:
    """Name -> loaded teacher for every card of the experiment (or only ``names``), on its device."""
    device = str(teachers_device(cfg))
    return {c.name: Teacher.load(c, device=device) for c in load_cards(cfg) if names is None or c.name in names}


def card_fingerprints(cfg) -> dict:
    return {path: file_fingerprint(path) if Path(path).exists() else "missing" for path in cfg.teachers.cards}


def teacher_inputs(cfg):
    """What the teachers stage reads outside the config: the cards, and the corpus directory the demo zoo
    trains on. Not the user's corpus files (``corpus.sources``): teachers are not built from them, so a bad
    or changed source file re-runs select and later stages only."""
    from mergedistill.corpus import resolve_dir

    out = {"cards": card_fingerprints(cfg), "corpus_dir": file_fingerprint(resolve_dir(cfg.corpus.dir or None))}
    checkpoints = local_checkpoints(cfg)
    return (
        {**out, "checkpoints": checkpoints} if checkpoints else out
    )  # none (demo, hub teachers): fingerprint as before


def local_checkpoints(cfg) -> dict:
    """Card path -> fingerprint of its local checkpoint directory, for cards without a build recipe (a teacher
    retrained in place must re-run the pipeline; built demo teachers are outputs of the teachers stage)."""
    out = {}
    for path in cfg.teachers.cards:
        if not Path(path).is_file():
            continue
        card = load_card(path)
        source = Path(card.source).expanduser()
        if not card.build and looks_local(card.source) and source.is_dir():
            out[path] = checkpoint_fingerprint(source)
    return out
