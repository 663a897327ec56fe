"""BiStil tasks, metrics and the whole `mergedistill bistil run` on a tiny teacher."""

import json

import numpy as np
import pytest
import torch

from mergedistill.bistil.task_metrics import (
    example_scores,
    f1_scores,
    flops_per_sequence,
    majority_accuracy,
    paired_bootstrap,
    task_metrics,
)
from mergedistill.bistil.tasks import KEYTERM_LABELS, MODULES, build_task, drop_copies, encode, keyterm_tags, words_of
from mergedistill.cli import main as cli_main
from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
from mergedistill.tokenizer_train import train_tokenizer


def test_keyterm_tags_localized_keys():
    words = words_of("Drücken Sie Strg+Umschalt+F5 in LibreOffice Calc 7.4")
    tags = [KEYTERM_LABELS[t] for t in keyterm_tags(words, "de")]
    assert list(zip(words, tags))[2:9] == [
        ("Strg", "KEY"),
        ("+", "O"),
        ("Umschalt", "KEY"),
        ("+", "O"),
        ("F5", "KEY"),
        ("in", "O"),
        ("LibreOffice", "PRODUCT"),
    ]
    assert tags[-3:] == ["NUM", "O", "NUM"]  # 7 . 4
    assert KEYTERM_LABELS[keyterm_tags(["Strg"], "en")[0]] == "O"  # key names are per language


def test_topic_task_and_token_label_alignment():
    records = [{"id": "a", "module": "scalc", "text": "Ctrl key in Calc"}, {"id": "b", "module": "bogus", "text": "x"}]
    topic = build_task("topic", "en", records)
    assert topic.labels == [MODULES.index("scalc")] and topic.ids == ["a"]
    terms = build_task("keyterms", "en", records)
    tok = train_tokenizer("wordpiece", ["Ctrl key in Calc", "key in"] * 20, vocab_size=60)
    [example] = encode(build_task("keyterms", "en", records[:1]), tok, 32)
    enc = tok(terms.inputs[0], is_split_into_words=True)
    first = [i for i, w in enumerate(enc.word_ids()) if w is not None and (i == 0 or enc.word_ids()[i - 1] != w)]
    assert [example["labels"][i] for i in first] == terms.labels[0]  # each word's label on its first piece
    assert sum(label != -100 for label in example["labels"]) == len(terms.inputs[0])


def test_topic_nocopy_drops_words_shared_with_the_translation():
    assert (
        drop_copies("Wählen Sie Format - Zellen in Calc 7.4.", "Choose Format - Cells in Calc 7.4.")
        == "Wählen Sie - Zellen .."
    )
    records = [
        {"id": "a", "module": "scalc", "text": "Rufen Sie FormatCellBorder auf"},
        {"id": "b", "module": "scalc", "text": "Calc"},
        {"id": "c", "module": "sbasic", "text": "ohne Partner"},
    ]
    partner = {"a": "Call FormatCellBorder", "b": "Calc"}
    task = build_task("topic-nocopy", "de", records, partner)
    assert task.ids == ["a"] and task.inputs == ["Rufen Sie auf"] and task.kind == "sequence"  # b empties, c unpaired
    assert build_task("topic", "de", records).inputs[0] == records[0]["text"]  # plain topic keeps every word
    with pytest.raises(ValueError, match="partner"):
        build_task("topic-nocopy", "de", records)


def test_metrics_and_flops():
    pred, gold = np.array([0, 1, 2, 2, 0]), np.array([0, 1, 1, 2, 2])
    f1 = f1_scores(pred, gold, range(3), ignore=(0,))
    assert f1["per_label"][1] == pytest.approx(2 / 3) and f1["per_label"][2] == pytest.approx(0.5)
    assert f1["micro"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert task_metrics(pred, gold, "sequence", 3)["accuracy"] == pytest.approx(0.6)
    assert majority_accuracy([2, 0, 2, 1], [2, 2, 0, 1, 1]) == pytest.approx(0.4)
    from transformers import BertConfig

    config = BertConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2)
    assert flops_per_sequence(config, 4, 3, False) == 2 * (2 * (4 * 4 * 64 + 2 * 4 * 8 * 16 + 2 * 16 * 8) + 64 + 24)


def test_example_scores_sum_to_the_task_score_and_the_paired_bootstrap_brackets_the_gain():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 600)
    examples = np.repeat(np.arange(100), 6)  # token task: 100 examples of 6 labelled tokens
    good = np.where(rng.random(600) < 0.8, gold, rng.integers(0, 4, 600))
    poor = np.where(rng.random(600) < 0.5, gold, rng.integers(0, 4, 600))
    for kind, rows in (("token", examples), ("sequence", np.arange(600))):
        num, den = example_scores(good, gold, rows, rows.max() + 1, kind)
        assert num.sum() / den.sum() == pytest.approx(task_metrics(good, gold, kind, 4)["score"])
    a, b = (example_scores(p, gold, examples, 100, "token") for p in (good, poor))
    gain = paired_bootstrap(a, b, samples=500)
    assert gain["diff"] == pytest.approx(
        task_metrics(good, gold, "token", 4)["score"] - task_metrics(poor, gold, "token", 4)["score"]
    )
    assert 0 < gain["low"] < gain["diff"] < gain["high"]
    same = paired_bootstrap(a, a, samples=50)
    assert same["diff"] == same["low"] == same["high"] == 0.0  # paired: one resample serves both models


def test_verdict_calls_far_above_scratch_only_with_the_margin_and_a_positive_interval():
    from mergedistill.bistil.zero_shot_report import verdict

    def rows(diff, low):
        return [
            {"model": "teacher", "target": 0.5, "target_ratio": 1.0, "speedup": 1.0},
            {"model": "bistil", "target": 0.5, "target_ratio": 1.0, "speedup": 3.0},
            {
                "model": "scratch",
                "target": 0.5 - diff,
                "target_ratio": 0.9,
                "speedup": 3.0,
                "bistil_minus": {"diff": diff, "low": low, "high": diff + 0.02},
            },
        ]

    assert "goal ≥ +0.050 with the interval above 0: met" in verdict(rows(0.08, 0.04), 0.95, 2.0, 0.05)
    assert "interval above 0: NOT met" in verdict(rows(0.04, 0.01), 0.95, 2.0, 0.05)  # too small a gain
    assert "interval above 0: NOT met" in verdict(rows(0.06, -0.01), 0.95, 2.0, 0.05)  # not significant
    assert "teacher − scratch = +0.040" in verdict(rows(0.04, 0.01), 0.95, 2.0, 0.05)  # the ceiling on the gain


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, corpus_texts):
    texts = corpus_texts["en"]["train"][:200] + corpus_texts["de"]["train"][:200] + corpus_texts["ja"]["train"][:100]
    tokenizer = train_tokenizer("wordpiece", texts, vocab_size=800)
    model = tiny_mlm("bert", tokenizer, hidden=32, layers=2, heads=2, intermediate=64, seed=0)
    return save_pretrained_teacher(model, tokenizer, tmp_path_factory.mktemp("bistil") / "teacher")


def test_bistil_run_end_to_end(tiny_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "bistil.yaml"
    config.write_text(f"""# mergedistill bistil run {config}
teacher: {tiny_teacher}
output_dir: {out}
source: en
target: de
trim: {{max_paragraphs: 300}}
phase1: {{steps: 6, batch_size: 8, max_length: 32, eval_every: 3, eval_batches: 1, max_paragraphs: 100}}
phase2: {{teacher_steps: 6, dense_steps: 4, sparse_steps: 4, batch_size: 8, max_length: 32, max_train_examples: 120}}
eval: {{max_test_examples: 40, latency_repeats: 2, latency_batch_size: 8}}
""")
    assert cli_main(["bistil", "run", str(config)]) == 0
    report = (out / "report" / "report.md").read_text()
    for name in (
        "task teacher",
        "BiStil (phase 1",
        "dense KD",
        "self-taught",
        "scratch student",
        "random-init student",
        "95 % CI",
    ):
        assert name in report
    assert json.loads((out / "phase1-scratch" / "manifest.json").read_text())["objective"] == "mlm"
    assert json.loads((out / "phase1-random-init" / "manifest.json").read_text())["objective"] == "distil"
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["trim"]["kept_vocab"] < results["trim"]["original_vocab"]
    assert results["student_layers"] == 1 and results["teacher_layers"] == 2
    assert 0 < results["tasks"]["topic"]["majority"] <= 1 and results["tasks"]["keyterms"]["majority"] is None
    assert "Always predicting the most frequent en training label" in report and "teacher − scratch =" in report
    for task in ("topic", "keyterms"):
        rows = {r["model"]: r for r in results["tasks"][task]["rows"]}
        eligible = json.loads((out / "phase2" / task / "bistil" / "manifest.json").read_text())["eligible"]
        assert rows["bistil"]["changed"] == round(0.08 * eligible)
        assert rows["dense"]["changed"] > rows["bistil"]["changed"]
        assert rows["bistil"]["flops"] < rows["teacher"]["flops"]
    # the rebuilt student (phase-1 model + head + diff) is the one that was evaluated; removing the diff gives phase 1 back
    from safetensors.torch import load_file

    from mergedistill.bistil.ltsft import SparseDiff
    from mergedistill.bistil.phase2 import load_student

    student = load_student(out / "phase1", out / "phase2" / "topic" / "bistil", "sequence", len(MODULES))
    SparseDiff.load(out / "phase2" / "topic" / "bistil" / "diff.safetensors").remove(student)
    phase1 = load_file(str(out / "phase1" / "model.safetensors"))
    for name, param in student.named_parameters():
        if name in phase1:
            assert torch.equal(param, phase1[name]), name
    # a second run skips every stage; a bad key is one line naming it
    capsys.readouterr()
    assert cli_main(["bistil", "run", str(config)]) == 0
    second = capsys.readouterr()
    assert "running" not in second.err and "[phase2/keyterms/random-init] up to date, skipped" in second.err
    assert cli_main(["bistil", "trim", str(config), "phase2.density=1.5"]) == 2
    assert "phase2.density" in capsys.readouterr().err


def test_saved_diff_and_head_rebuild_the_trained_student(tiny_teacher, tmp_path):
    """What phase 2 trains is what evaluation loads: phase-1 model + head + diff, every parameter equal."""
    from types import SimpleNamespace

    from safetensors.torch import save_file
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mergedistill.bistil.layer_reduction import make_student
    from mergedistill.bistil.phase2 import load_student, task_model, train_student
    from mergedistill.bistil.tasks import collate

    teacher_mlm = AutoModelForMaskedLM.from_pretrained(str(tiny_teacher))
    phase1 = tmp_path / "phase1"
    make_student(teacher_mlm, 2).save_pretrained(phase1)
    AutoTokenizer.from_pretrained(str(tiny_teacher)).save_pretrained(phase1)
    teacher = task_model(tiny_teacher, "token", 4, seed=1).eval()
    batches = [
        collate(
            [
                {"input_ids": torch.randint(5, 700, (12,)).tolist(), "labels": torch.randint(0, 4, (12,)).tolist()}
                for _ in range(4)
            ],
            0,
        )
        for _ in range(3)
    ]
    cfg = SimpleNamespace(
        temperature=2.0,
        alpha_kd=1.0,
        alpha_gold=0.5,
        alpha_attn=0.0,
        alpha_hidden=1.0,
        include_embeddings=False,
        density=0.1,
        lr=1e-2,
        head_lr=1e-2,
    )
    for variant in ("bistil", "dense"):
        model, diff, head, _ = train_student(phase1, teacher, "token", 4, variant, cfg, batches, batches)
        out = tmp_path / variant
        out.mkdir()
        diff.save(out / "diff.safetensors")
        save_file({k: v.contiguous() for k, v in head.items()}, str(out / "head.safetensors"))
        rebuilt = load_student(phase1, out, "token", 4)
        trained = dict(model.named_parameters())
        for name, param in rebuilt.named_parameters():
            assert torch.equal(param, trained[name]), (variant, name)


def test_a_teacher_card_with_a_recipe_is_built_by_bistil_itself(tmp_path):
    """`bistil trim` on a card whose teacher does not exist yet builds it first (no separate `teachers build`),
    and trimming + phase 1 work on a DeBERTa-v2 teacher (the demo's architecture) with layer stride 3."""
    from mergedistill.bistil.recipe import bistil_stages
    from mergedistill.bistil.schema import BistilConfig
    from mergedistill.config import from_dict
    from mergedistill.io import read_manifest
    from mergedistill.pipeline import run_stages

    card = tmp_path / "mmt.yaml"
    card.write_text(f"""name: mmt
source: {tmp_path / "zoo" / "mmt"}
languages: [en, de, ja]
family: wordpiece
max_length: 32
build:
  tokenizer: {{family: wordpiece, vocab_size: 500}}
  model: {{arch: deberta-v2, hidden: 32, layers: 3, heads: 2, intermediate: 64}}
  train: {{steps: 3, batch_size: 4, max_length: 32, max_paragraphs: 80, warmup: 1}}
""")
    cfg = from_dict(
        BistilConfig,
        {
            "teacher": str(card),
            "output_dir": str(tmp_path / "run"),
            "trim": {"max_paragraphs": 100},
            "phase1": {
                "layer_stride": 3,
                "steps": 2,
                "batch_size": 4,
                "max_length": 32,
                "eval_every": 2,
                "eval_batches": 1,
                "max_paragraphs": 40,
            },
        },
    )
    first = run_stages(cfg, bistil_stages(cfg)[:2], cfg.output_dir, log=lambda m: None)  # trim, phase1
    assert (tmp_path / "zoo" / "mmt" / "model.safetensors").is_file()
    manifest = read_manifest(tmp_path / "run" / "phase1")
    assert manifest["layers"] == 1 and manifest["teacher_layers"] == 3
    again = run_stages(cfg, bistil_stages(cfg)[:2], cfg.output_dir, log=lambda m: None)
    # the built teacher is current: same fingerprints, nothing rebuilt
    assert [r.status for r in again] == ["skipped"] * 2
    assert [r.fingerprint for r in again] == [r.fingerprint for r in first]


SMALL = """# mergedistill bistil run {config}
teacher: {teacher}
output_dir: {out}
source: en
target: de
trim: {{max_paragraphs: 200}}
phase1: {{steps: 2, batch_size: 8, max_length: 32, eval_every: 2, eval_batches: 1, max_paragraphs: 40}}
phase2: {{tasks: [topic], variants: [bistil], teacher_steps: 2, dense_steps: 2, sparse_steps: 2, batch_size: 8,
         max_length: 32, max_train_examples: 40}}
eval: {{max_test_examples: 16, latency_repeats: 1, latency_batch_size: 4}}
"""
SMALL_STAGES = ["trim", "phase1", "phase2/topic/teacher", "phase2/topic/bistil", "report"]


@pytest.fixture(scope="module")
def small_run(tiny_teacher, tmp_path_factory):
    """(config, output dir) of one uninterrupted `bistil run` of one task and one variant: five stages."""
    root = tmp_path_factory.mktemp("bistil-small")
    config = root / "bistil.yaml"
    config.write_text(SMALL.format(config=config, teacher=tiny_teacher, out=root / "reference"))
    assert cli_main(["bistil", "run", str(config)]) == 0
    return config, root / "reference"


def stage_lines(err: str) -> dict:
    """stage -> "ran" | "skipped", from the pipeline's log lines."""
    out = {}
    for line in err.splitlines():
        name, _, rest = line.partition("] ")
        if line.startswith("[") and (rest.startswith("running") or rest.startswith("up to date")):
            out[name[1:]] = "ran" if rest.startswith("running") else "skipped"
    return out


def stamps(out, names) -> dict:
    """stage -> (manifest bytes, mtime in ns): unchanged exactly when the stage was not run again."""
    return {
        n: ((out / n / "manifest.json").read_bytes(), (out / n / "manifest.json").stat().st_mtime_ns) for n in names
    }


def same_outputs(a, b) -> list[str]:
    """The files of the two runs whose deterministic content differs (weights, sparse diffs, scores)."""
    from safetensors import safe_open

    differ = []
    for stage in SMALL_STAGES[:-1]:
        for file in sorted((a / stage).glob("*.safetensors")):
            x, y = safe_open(str(file), "pt"), safe_open(str(b / stage / file.name), "pt")
            if sorted(x.keys()) != sorted(y.keys()) or x.metadata() != y.metadata():
                differ.append(f"{stage}/{file.name}")
            elif any(not torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()):
                differ.append(f"{stage}/{file.name}")
    scores = [
        [
            (r["model"], r["metrics"], r["params"], r["changed"])
            for r in json.loads((run / "report" / "results.json").read_text())["tasks"]["topic"]["rows"]
        ]
        for run in (a, b)
    ]
    return differ + (["report/results.json"] if scores[0] != scores[1] else [])


def test_bistil_run_killed_inside_a_stage_skips_the_finished_ones_and_redoes_that_one(small_run, tmp_path, capsys):
    """A real SIGKILL (``faults``: ``MERGEDISTILL_KILL_AT``) after the task teacher is trained into its temp
    dir, before it is renamed into place; the re-run skips trim and phase1 and ends with the uninterrupted run's outputs."""
    import os
    import signal
    import subprocess
    import sys

    config, reference = small_run
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGEDISTILL_")}
    env.update(MERGEDISTILL_KILL_AT="seal:phase2/topic/teacher@1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(
        [sys.executable, "-m", "mergedistill", "bistil", "run", str(config), f"output_dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert stage_lines(done.stderr) == {"trim": "ran", "phase1": "ran", "phase2/topic/teacher": "ran"}
    task = out / "phase2" / "topic"
    assert sorted(p.name.split(".")[1] if p.name.startswith(".") else p.name for p in task.iterdir()) == [
        "teacher",  # the temp dir the kill left: .teacher.<random>.tmp
        "teacher.work",
    ]
    finished = stamps(out, ["trim", "phase1"])

    capsys.readouterr()
    assert cli_main(["bistil", "run", str(config), f"output_dir={out}"]) == 0
    assert stage_lines(capsys.readouterr().err) == {
        "trim": "skipped",
        "phase1": "skipped",
        "phase2/topic/teacher": "ran",
        "phase2/topic/bistil": "ran",
        "report": "ran",
    }
    assert stamps(out, ["trim", "phase1"]) == finished  # not rewritten
    assert sorted(p.name for p in task.iterdir()) == ["bistil", "teacher"]  # no temp or work dir left
    assert not list(out.glob("*.work")) and not list(out.glob(".*.tmp"))
    assert same_outputs(reference, out) == []


def test_bistil_only_and_force_select_stages_as_run_does(small_run, tmp_path, capsys):
    import shutil

    config, reference = small_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)  # fingerprints do not hold output_dir: every stage is current here

    def bistil(*args) -> dict:
        capsys.readouterr()
        assert cli_main(["bistil", *args[:1], str(config), f"output_dir={out}", *args[1:]]) == 0
        return stage_lines(capsys.readouterr().err)

    before = stamps(out, SMALL_STAGES)
    # forcing a stage re-runs it alone: its fingerprint is unchanged, so what reads it stays current (as in `run`)
    assert bistil("run", "--force", "phase2") == {
        "trim": "skipped",
        "phase1": "skipped",
        "phase2/topic/teacher": "ran",
        "phase2/topic/bistil": "ran",
        "report": "skipped",
    }
    after = stamps(out, SMALL_STAGES)
    assert [n for n in SMALL_STAGES if after[n] != before[n]] == ["phase2/topic/teacher", "phase2/topic/bistil"]
    assert bistil("run", "--only", "trim", "phase2/topic/bistil", "--force", "phase2/topic/bistil") == {
        "trim": "skipped",
        "phase2/topic/bistil": "ran",
    }
    # a stage action runs the stages up to its own; its --force flag forces its own stages
    assert bistil("phase1", "--force") == {"trim": "skipped", "phase1": "ran"}
    assert bistil("phase2") == {
        "trim": "skipped",
        "phase1": "skipped",
        "phase2/topic/teacher": "skipped",
        "phase2/topic/bistil": "skipped",
    }
    assert same_outputs(reference, out) == []
    capsys.readouterr()
    assert cli_main(["bistil", "run", str(config), f"output_dir={out}", "--force", "phase3"]) == 2
    assert "--force phase3: no such stage; the stages are trim, phase1, phase2/topic/teacher" in capsys.readouterr().err


def test_bistil_fingerprints_chain_through_the_stages_each_declares_it_reads(tiny_teacher, tmp_path):
    """A changed input re-runs the stages that read it, directly or through others, and no more."""
    from mergedistill.bistil.recipe import bistil_stages
    from mergedistill.bistil.schema import BistilConfig
    from mergedistill.config import from_dict
    from mergedistill.pipeline import stage_fingerprint

    def fingerprints(**changes) -> dict:
        base = {"teacher": str(tiny_teacher), "phase2": {"tasks": ["topic"], "variants": ["bistil", "scratch"]}}
        cfg = from_dict(BistilConfig, {**base, **changes})
        out: dict = {}
        for stage in bistil_stages(cfg):
            out[stage.name] = stage_fingerprint(stage, cfg, out)
        return out

    def rerun(**changes) -> list[str]:
        new = fingerprints(**changes)
        return [name for name, fp in new.items() if base.get(name) != fp]

    base = fingerprints()
    assert list(base) == [
        "trim",
        "phase1",
        "phase1-scratch",
        "phase2/topic/teacher",
        "phase2/topic/bistil",
        "phase2/topic/scratch",
        "report",
    ]
    assert rerun(phase1={"steps": 3}) == [
        "phase1",
        "phase1-scratch",
        "phase2/topic/bistil",
        "phase2/topic/scratch",
        "report",
    ]
    assert rerun(phase2={"tasks": ["topic"], "variants": ["bistil", "scratch"], "teacher_steps": 3}) == [
        "phase2/topic/teacher",
        "phase2/topic/bistil",
        "phase2/topic/scratch",
        "report",
    ]
    # a new variant or task adds its stages; the students already trained stay current
    assert rerun(phase2={"tasks": ["topic", "keyterms"], "variants": ["bistil", "scratch", "dense"]}) == [
        "phase2/topic/dense",
        "phase2/keyterms/teacher",
        "phase2/keyterms/bistil",
        "phase2/keyterms/scratch",
        "phase2/keyterms/dense",
        "report",
    ]
    assert rerun(target="ja") == list(base)  # the trimmed vocabulary changes, so does everything after it
    assert rerun(eval={"max_test_examples": 5}) == ["report"]
