"""End to end: `mergedistill run` on tiny demo-style teachers, the export loaded by plain transformers,
a second run that skips every stage, and a run interrupted in the train stage that resumes."""

import json
import subprocess
import sys

import pytest

from mergedistill.cli import main
from mergedistill.io import read_manifest

CARD = """name: {name}
source: {root}/zoo/{name}
languages: [{langs}]
max_length: 48
build:
  tokenizer: {{family: {family}, vocab_size: 500}}
  model: {{arch: {arch}, hidden: 32, layers: 2, heads: 2, intermediate: 64}}
  train: {{steps: 8, batch_size: 8, max_length: 48, max_paragraphs: 150, warmup: 2}}
"""

EXPERIMENT = """# mergedistill run {root}/exp.yaml
name: tiny
output_dir: {root}/out
corpus: {{languages: [en, de, ja], max_train_paragraphs: 150, max_eval_paragraphs: 20}}
teachers: {{cards: [{root}/multi.yaml, {root}/de.yaml, {root}/ja.yaml]}}
select: {{strategy: score}}
# routed (MergeDistill's): the first test checks the routed export; the others run unified, the default
data: {{max_length: 48, tokenization: routed}}
cache: {{top_k: 4}}
student: {{layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 64}}
train: {{steps: 6, batch_size: 4, warmup_steps: 1, checkpoint_every: 2, log_every: 2}}
eval: {{paragraphs: 12, speed_batch_sizes: [1]}}
export: {{fill_mask_examples: 1}}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "multi.yaml").write_text(
        CARD.format(name="multi", root=root, langs="en, de, ja", family="wordpiece", arch="bert")
    )
    (root / "de.yaml").write_text(CARD.format(name="de", root=root, langs="de", family="bytelevel", arch="roberta"))
    (root / "ja.yaml").write_text(CARD.format(name="ja", root=root, langs="ja", family="unigram", arch="xlm-roberta"))
    (root / "exp.yaml").write_text(EXPERIMENT.format(root=root))
    return root


def test_run_end_to_end_then_skip_then_resume(experiment, capsys, monkeypatch):
    import mergedistill.corpus as corpus

    root = experiment
    splits, real_load = {}, corpus.load_texts

    def recording(lang, split, *args, **kwargs):  # stage_* -> eval_texts -> load_texts
        splits.setdefault(sys._getframe(2).f_code.co_name, set()).add(split)
        return real_load(lang, split, *args, **kwargs)

    monkeypatch.setattr(corpus, "load_texts", recording)
    assert main(["run", str(root / "exp.yaml")]) == 0
    monkeypatch.setattr(corpus, "load_texts", real_load)
    assert splits["stage_select"] == {"valid"} and splits["stage_eval"] == {"test"}  # select on valid, report on test
    assert splits.get("stage_export", {"test"}) == {"test"}  # fill-mask examples (unified exports only) too
    out = root / "out"
    for stage in ("teachers", "select", "vocab", "cache", "train", "baseline", "eval", "export", "report"):
        assert read_manifest(out / stage) is not None, stage
    report = (out / "report" / "report.md").read_text()
    assert "| de |" in report and "Teacher selection" in report
    assert (
        "outside the merged vocabulary" in report and "de@de " in report
    )  # the dropped top-k mass per language@teacher
    assert {p.name for p in (out / "report").glob("*.png")} >= {
        "training_curves.png",
        "languages.png",
        "selection_heatmap.png",
    }
    eval_rows = json.loads((out / "eval" / "eval.json").read_text())["rows"]
    assert {r["lang"] for r in eval_rows} == {"en", "de", "ja"}
    served = json.loads((out / "cache" / "plan.json").read_text())["served_by_language"]
    assert set(served) == {"en", "de", "ja"} and all(r["teacher"] in served[r["lang"]] for r in eval_rows)
    routes = json.loads((out / "export" / "routed" / "routed_tokenizer.json").read_text())["routes"]
    assert routes == {r["lang"]: r["teacher"] for r in eval_rows}  # exported through the teachers evaluated through

    # routed training (this experiment's): the model loads with plain transformers, but AutoTokenizer and the
    # fill-mask pipeline refuse (no one tokenizer segments as in training) with a line naming the routed loader
    code = (
        "import sys; from transformers import AutoModelForMaskedLM; m = AutoModelForMaskedLM.from_pretrained(sys.argv[1]);"
        "assert 'mergedistill' not in sys.modules; print(m.config.vocab_size)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out / "export")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "export" / "routed").is_dir()
    for load in ("AutoTokenizer.from_pretrained(sys.argv[1])", "pipeline('fill-mask', model=sys.argv[1])"):
        code = f"import sys; from transformers import AutoTokenizer, pipeline; {load}"
        result = subprocess.run([sys.executable, "-c", code, str(out / "export")], capture_output=True, text=True)
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("ValueError: ") and "mergedistill.vocab.load_routed_tokenizer(PATH)" in last, last
    card = (out / "export" / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "load_routed_tokenizer('PATH')" in card
    # the report's fill-mask examples read the text as the student was trained on it (routed) and show its top-1
    import torch
    from transformers import AutoModelForMaskedLM

    from mergedistill.vocab import SPECIAL_IDS, load_routed_tokenizer, load_vocab

    examples = json.loads((out / "export" / "fill_mask_examples.json").read_text())
    routed, pieces = load_routed_tokenizer(out / "export"), load_vocab(out / "vocab").pieces
    model = AutoModelForMaskedLM.from_pretrained(out / "export").eval()
    assert set(examples) == {"en", "de", "ja"} and all(examples.values())
    for lang, items in examples.items():
        for item in items:
            encoded = routed.encode(item["source"], lang)
            position = [i for i, piece in enumerate(encoded) if piece >= 5][len([i for i in encoded if i >= 5]) // 2]
            assert pieces[encoded[position]] == item["masked"] and "[MASK]" in item["text"]
            encoded[position] = SPECIAL_IDS["mask"]
            with torch.inference_mode():
                top1 = int(model(input_ids=torch.tensor([encoded])).logits[0, position].argmax())
            assert pieces[top1] == item["predictions"][0]["token"], (lang, item)

    # second run: every stage skipped
    capsys.readouterr()
    assert main(["run", str(root / "exp.yaml")]) == 0
    assert capsys.readouterr().err.count("up to date, skipped") == 9

    # a changed training config re-runs train and what follows; an interruption inside train resumes
    import mergedistill.train as train_module

    real_train = train_module.train

    def killed(*args, **kwargs):
        return real_train(*args, **{**kwargs, "stop_at_step": 4})

    train_module.train = killed
    try:
        assert main(["run", str(root / "exp.yaml"), "train.steps=8"]) == 130  # Ctrl-C: "re-run to resume"
    finally:
        train_module.train = real_train
    assert read_manifest(out / "train")["final_loss"] is not None  # the previous output is still intact
    assert main(["run", str(root / "exp.yaml"), "train.steps=8"]) == 0
    assert read_manifest(out / "train")["resumed_from_step"] == 4


def test_weighted_selection_runs_through_the_pipeline(experiment):
    """Two cards over one checkpoint share a tokenization, so `weighted` mixes them per example (after the
    test above built the zoo). The mixed stream is cached, trained on and evaluated like any other, under the
    default unified tokenization."""
    root = experiment
    (root / "twin.yaml").write_text(f"name: twin\nsource: {root}/zoo/multi\nlanguages: [en]\nmax_length: 48\n")
    config = (
        EXPERIMENT.format(root=root)
        .replace("[en, de, ja]", "[en]")
        .replace("{root}/out".format(root=root), f"{root}/weighted")
        .replace(f"{root}/de.yaml, {root}/ja.yaml", f"{root}/twin.yaml")
        .replace("strategy: score", "strategy: weighted")
        .replace("tokenization: routed", "tokenization: unified")
    )
    (root / "weighted.yaml").write_text(config)
    assert main(["run", str(root / "weighted.yaml")]) == 0
    assignment = json.loads((root / "weighted" / "select" / "assignment.json").read_text())
    assert assignment["strategy"] == "weighted" and assignment["assignment"] == {"en": ["multi", "twin"]}
    plan = json.loads((root / "weighted" / "cache" / "plan.json").read_text())
    assert list(plan["streams"]) == ["en@multi+twin"] and plan["served_examples"] == {"multi+twin": 6 * 4}
    assert read_manifest(root / "weighted" / "eval") is not None
    assert (root / "weighted" / "export" / "tokenizer.json").is_file()  # unified: the tokenizer it trained on


def test_unified_tokenization_runs_through_the_pipeline(experiment):
    """`data.tokenization: unified` (after the first test built the zoo): the student trains on the merged
    tokenizer's pieces, and the export's top-level tokenizer reproduces its training inputs."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    root = experiment
    out = root / "unified"
    assert (
        main(
            [
                "run",
                str(root / "exp.yaml"),
                f"output_dir={out}",
                "data.tokenization=unified",
                "eval.baseline=false",
                "train.precision=bf16",
            ]
        )
        == 0
    )
    assert read_manifest(out / "train")["precision"] == "bf16"
    assert json.loads((out / "export" / "config.json").read_text())["dtype"] == "float32"
    from safetensors import safe_open

    with safe_open(out / "export" / "model.safetensors", "pt") as weights:
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"F32"}
    assert "The student trained in bf16 (train.precision: bf16)" in (out / "report" / "report.md").read_text()
    rows = json.loads((out / "eval" / "eval.json").read_text())["rows"]
    assert {r["lang"] for r in rows} == {"en", "de", "ja"} and all(r["masked"] > 0 for r in rows)
    served = json.loads((out / "cache" / "plan.json").read_text())["served_examples"]
    assert sum(served.values()) == 6 * 4
    assert "unified tokenization" in (out / "export" / "README.md").read_text()
    check = json.loads((out / "export" / "tokenizer_check.json").read_text())
    assert set(check) == {"en", "de", "ja"}
    assert all(c["paragraphs"] > 0 and c["ids_equal"] == c["paragraphs"] for c in check.values()), check
    assert (
        "The exported AutoTokenizer gives the ids the student was trained" in (out / "report" / "report.md").read_text()
    )
    # the export loads with plain transformers, no mergedistill import, and fills masks
    code = (
        "import sys; from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline; d = sys.argv[1];"
        "m = AutoModelForMaskedLM.from_pretrained(d); t = AutoTokenizer.from_pretrained(d);"
        "r = pipeline('fill-mask', model=m, tokenizer=t)('Klicken Sie auf ' + t.mask_token + ' .');"
        "assert 'mergedistill' not in sys.modules; print(len(r))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out / "export")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "5"
    tokenizer, model = (
        AutoTokenizer.from_pretrained(out / "export"),
        AutoModelForMaskedLM.from_pretrained(out / "export"),
    )
    from mergedistill.vocab.store import unified_tokenizer

    trained_on = unified_tokenizer(out / "vocab")
    texts = ["Click the button to save.", "Klicken Sie auf Speichern.", "ボタンをクリックして保存します。"]
    assert tokenizer(texts)["input_ids"] == trained_on(texts)["input_ids"]
    ids = tokenizer(texts[0], return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tokenizer) == len(trained_on)
