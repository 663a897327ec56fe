"""A tiny, self-contained experiment for the reliability tests: corpus files, two teachers, cards, config.

``build_world(root)`` writes, all with paths relative to ``root`` (commands run with ``root`` as cwd):

    corpus/{en,de,fr}.txt          one paragraph per line, taken from the embedded corpus
    teachers/wp                    tiny WordPiece BERT teacher (en, de)
    teachers/bl                    tiny byte-level BPE RoBERTa teacher (de): another tokenization
    teachers/headless              a BertModel without a masked-LM head
    teachers/special-mismatch      wp with a [MASK] re-added beyond the model's embedding rows
    teachers/no-mask               wp whose tokenizer lost its mask token
    cards/wp.yaml, cards/bl.yaml   teacher cards (source ./teachers/...)
    exp.yaml                       the experiment (CONFIG), output_dir: out

and, with ``stages_until``, runs the pipeline in-process up to that stage (out/teachers, select, ...).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

CONFIG = {
    "name": "reliability",
    "output_dir": "out",
    "seed": 0,
    # the catalogue's cases are about inputs, not devices: on a GPU machine `auto` would pick CUDA, which has fp16
    # (case fp16-on-cpu) and rounds differently from run to run (the kill-and-resume tests compare weights exactly)
    "device": "cpu",
    "corpus": {
        "languages": ["en", "de"],
        "sources": {"en": {"path": "corpus/en.txt"}, "de": {"path": "corpus/de.txt"}},
        "max_eval_paragraphs": 8,
    },
    "teachers": {"cards": ["cards/wp.yaml", "cards/bl.yaml"]},
    "select": {"strategy": "static", "assignment": {"en": "wp", "de": "bl"}},
    "vocab": {"unified_tokenizer": False},
    # MergeDistill's routed path (unified, the default: tests/test_unified*.py)
    "data": {"max_length": 32, "tokenization": "routed"},
    "cache": {"top_k": 4, "batch_size": 8},
    "student": {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "max_position": 40, "dropout": 0.1},
    "train": {"steps": 12, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1},
    "eval": {"paragraphs": 4, "speed_batch_sizes": [1], "baseline": False},
}

CARD = "name: {name}\nsource: ./teachers/{name}\nlanguages: [{langs}]\nmax_length: 64\n"


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(root: Path, changes: dict | None = None, name: str = "exp.yaml") -> Path:
    path = Path(root) / name
    text = "# mergedistill run exp.yaml   (the reliability tests' tiny experiment)\n"
    path.write_text(text + yaml.safe_dump(merged(CONFIG, changes or {}), sort_keys=False), encoding="utf-8")
    return path


def embedded_paragraphs(lang: str, n: int) -> list[str]:
    with gzip.open(REPO / "data" / "corpus" / lang / "train.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line, _ in zip(handle, range(n))]


@contextlib.contextmanager
def cwd(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def build_world(root: Path, stages_until: str | None = None) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
    from mergedistill.tokenizer_train import train_tokenizer

    root = Path(root)
    texts = {lang: embedded_paragraphs(lang, n) for lang, n in (("en", 240), ("de", 240), ("fr", 80))}
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    for lang, paragraphs in texts.items():
        (root / "corpus" / f"{lang}.txt").write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    teachers = root / "teachers"
    size = dict(hidden=16, layers=1, heads=2, intermediate=32, max_position=66, seed=1)
    wordpiece = train_tokenizer("wordpiece", texts["en"] + texts["de"], vocab_size=300)
    save_pretrained_teacher(tiny_mlm("bert", wordpiece, **size), wordpiece, teachers / "wp")
    bytelevel = train_tokenizer("bytelevel", texts["de"], vocab_size=300)
    save_pretrained_teacher(tiny_mlm("roberta", bytelevel, **size), bytelevel, teachers / "bl")

    headless = BertModel(
        BertConfig(
            vocab_size=len(wordpiece), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    save_pretrained_teacher(headless, wordpiece, teachers / "headless")

    shutil.copytree(teachers / "wp", teachers / "special-mismatch")
    tokenizer = AutoTokenizer.from_pretrained(teachers / "special-mismatch")
    tokenizer.add_special_tokens({"mask_token": "<mask>"})  # a new id the model has no embedding row for
    tokenizer.save_pretrained(teachers / "special-mismatch")

    shutil.copytree(teachers / "wp", teachers / "no-mask")
    tokenizer_config = teachers / "no-mask" / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    settings.pop("mask_token")
    tokenizer_config.write_text(json.dumps(settings, indent=2), encoding="utf-8")

    (root / "cards").mkdir(exist_ok=True)
    (root / "cards" / "wp.yaml").write_text(CARD.format(name="wp", langs="en, de"), encoding="utf-8")
    (root / "cards" / "bl.yaml").write_text(CARD.format(name="bl", langs="de"), encoding="utf-8")
    write_config(root)
    if stages_until is not None:
        from mergedistill.config import load_config
        from mergedistill.stages import run_experiment

        with cwd(root), open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            run_experiment(load_config("exp.yaml"), config_path="exp.yaml", until=stages_until)
    return root


def clean_env() -> dict:
    """The environment for a child process, without the rendezvous variables an in-process DeepSpeed run set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env
