"""min-ce end to end on a case whose right answer is known.

One language ("sr": Serbian is written in both scripts) whose paragraphs here are English or Russian text
reduced to letters and spaces, so that every non-special piece of the WordPiece vocabulary trained on them
is either Latin or Cyrillic. Two teachers
share that tokenizer and one set of random weights; each has the output bias of the OTHER script's pieces
lowered by 40, so it can only read its own script: at every masked piece of an English paragraph the
"latin" teacher's log-probability of the gold piece is higher than the "cyrillic" one's by more than 30
nats (40 minus at most log(vocabulary size) from the changed normalisation), and the reverse on Russian.

The real select, vocab, split and cache stages (``mergedistill run ... until cache``) must then route every
English paragraph to "latin" and every Russian one to "cyrillic", keeping corpus order, and planning
again from the stage outputs must give the same streams.
"""

import copy
import json
import re
from pathlib import Path

import pytest

from mergedistill.config import ExperimentConfig, from_dict
from mergedistill.corpus import load_texts
from mergedistill.data import make_stream
from mergedistill.plan import example_ce, make_plan, read_split
from mergedistill.selection import make_strategy
from mergedistill.stages import run_experiment
from mergedistill.teachers import load_teachers
from tests.reliability.world import embedded_paragraphs

CYRILLIC = re.compile("[\u0400-\u04ff]")
LATIN = re.compile("[A-Za-z]")
PENALTY = 40.0


def letters(text: str, keep: str) -> str:
    """``text`` with everything but the ``keep`` letters turned into spaces, cut to 24 words."""
    return " ".join(re.sub(f"[^{keep}]", " ", text).split()[:24])


def paragraphs() -> list[str]:
    """English and Russian paragraphs of at least 4 words, alternating (the corpus order)."""
    english = [t for t in (letters(p, "A-Za-z") for p in embedded_paragraphs("en", 160)) if len(t.split()) >= 4]
    russian = [t for t in (letters(p, "\u0400-\u04ff") for p in embedded_paragraphs("ru", 160)) if len(t.split()) >= 4]
    n = min(len(english), len(russian), 90)
    return [p for pair in zip(english[:n], russian[:n]) for p in pair]


def script_teachers(root, texts):
    """Save the "latin" and "cyrillic" teachers; returns the ids of each script's pieces."""
    from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
    from mergedistill.tokenizer_train import train_tokenizer

    tokenizer = train_tokenizer("wordpiece", texts, vocab_size=400)
    special = set(tokenizer.all_special_ids)
    pieces = {i: tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer)) if i not in special}
    ids = {
        "cyrillic": [i for i, p in pieces.items() if CYRILLIC.search(p)],
        "latin": [i for i, p in pieces.items() if LATIN.search(p)],
    }
    # the premise: every non-special piece belongs to exactly one script
    assert sorted(ids["cyrillic"] + ids["latin"]) == sorted(pieces), [
        p for i, p in pieces.items() if (i in ids["latin"]) == (i in ids["cyrillic"])
    ]
    base = tiny_mlm("bert", tokenizer, hidden=16, layers=1, heads=2, intermediate=32, max_position=66, seed=1)
    for name, other in (("latin", "cyrillic"), ("cyrillic", "latin")):
        model = copy.deepcopy(base)
        model.cls.predictions.bias.data[ids[other]] -= PENALTY  # (the decoder's bias is the same tensor)
        save_pretrained_teacher(model, tokenizer, root / "teachers" / name)
        (root / f"{name}.yaml").write_text(
            f"name: {name}\nsource: {root}/teachers/{name}\nlanguages: [sr]\nmax_length: 64\n"
        )
    return ids


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    root = tmp_path_factory.mktemp("min-ce")
    texts = paragraphs()
    (root / "sr.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    script_teachers(root, texts)
    cfg = from_dict(
        ExperimentConfig,
        {
            "name": "min-ce-scripts",
            "output_dir": str(root / "out"),
            "seed": 0,
            "corpus": {
                "languages": ["sr"],
                "sources": {"sr": {"path": str(root / "sr.txt")}},
                "max_eval_paragraphs": 6,
            },
            "teachers": {"cards": [str(root / "latin.yaml"), str(root / "cyrillic.yaml")]},
            "select": {"strategy": "min-ce"},
            "vocab": {"unified_tokenizer": False},
            "data": {"max_length": 32, "tokenization": "routed"},  # hand-made slow teacher tokenizers
            "cache": {"mode": "online", "top_k": 4},
            "student": {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "max_position": 40},
            "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1},
        },
        source="test",
    )
    run_experiment(cfg, until="cache")
    return cfg


def test_min_ce_sends_each_paragraph_to_the_teacher_that_reads_its_script(routed):
    cfg = routed
    out = Path(cfg.output_dir)
    train = load_texts("sr", "train", cfg)
    expected = {"latin": [t for t in train if LATIN.search(t)], "cyrillic": [t for t in train if CYRILLIC.search(t)]}
    assert len(expected["latin"]) > 20 and len(expected["cyrillic"]) > 20
    assert len(expected["latin"]) + len(expected["cyrillic"]) == len(train)  # each paragraph is in one script

    assignment = json.loads((out / "select" / "assignment.json").read_text())
    assert assignment == {"strategy": "min-ce", "per_example": True, "assignment": {"sr": ["cyrillic", "latin"]}}

    # the split the split stage stored, and the streams the strategy makes of it: exactly the expected paragraphs,
    # in corpus order; scoring again gives the same split
    teachers, names, strategy = load_teachers(cfg), ["cyrillic", "latin"], make_strategy(cfg.select)
    stored = read_split(out / "split", "sr", names, len(train))
    assert {s.teacher: list(s.texts) for s in strategy.streams("sr", names, train, stored)} == expected
    again = strategy.choose(example_ce(cfg, teachers, "sr", names, train, log=lambda m: None))
    assert again.tolist() == stored.tolist()

    # the streams the cache stage recorded, and those planned again from the stage outputs, hold exactly these paragraphs
    from mergedistill.vocab import load_vocab

    merged = load_vocab(out / "vocab")
    wanted = {
        f"sr@{name}": make_stream("sr", teachers[name], texts, merged.id_maps[name], cfg.data.max_length).sequences
        for name, texts in expected.items()
    }
    recorded = json.loads((out / "cache" / "plan.json").read_text())
    assert recorded["streams"] == {name: len(sequences) for name, sequences in wanted.items()}
    plan, _, _ = make_plan(cfg, out / "vocab", out / "select", out / "split")
    assert sorted(s.name for s in plan.streams) == sorted(wanted)
    for stream in plan.streams:
        got = wanted[stream.name]
        assert len(stream.sequences) == len(got) and all((a == b).all() for a, b in zip(stream.sequences, got)), (
            stream.name
        )
