"""The exported student is the trained student: loaded in a fresh interpreter with only `transformers`, it reads
held-out text of every language into the ids the student was trained and evaluated on and predicts what
mergedistill's own eval path predicts, for the demo's student architecture (deberta-v2) and BERT, with routed
and unified tokenization. Also: the export's routed/ folder is the vocabulary's routing, id maps and teacher
tokenizers. (The runs are tests/helpers/tiny_runs.py's, shared with tests/test_report_numbers.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny_runs import ARCHS, TOKENIZATIONS

HELPER = Path(__file__).resolve().parent / "helpers" / "export_predict.py"
LOGIT_ATOL = (
    1e-5  # fp32, the same weights: the eval path pads batches of 32 and projects masked positions only (seen: <= 1e-7)
)
TEXTS_PER_LANGUAGE = 5
VARIANTS = [
    pytest.param(arch, tokenization, id=f"{arch}-{tokenization}") for arch in ARCHS for tokenization in TOKENIZATIONS
]


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def held_out_texts(cfg, teacher, unified, lang):
    """The first paragraphs of ``lang``'s evaluation split that fit the sequence length whole in both
    tokenizations (the eval path cuts longer ones into packed pieces a plain tokenizer call would not reproduce)."""
    from mergedistill.corpus import eval_texts

    fitting = []
    for text in eval_texts(cfg, lang, 40, split="test"):
        teacher_length = len(teacher.tokenizer(text)["input_ids"])
        student_length = len(unified(text)["input_ids"]) if unified is not None else teacher_length
        if teacher_length <= teacher.card.max_length and student_length <= cfg.data.max_length:
            fitting.append(text)
    assert len(fitting) >= TEXTS_PER_LANGUAGE, f"only {len(fitting)} short {lang} held-out paragraphs"
    return fitting[:TEXTS_PER_LANGUAGE]


def eval_path(student, teacher, id_map, texts, cfg, unified):
    """Run ``compare_student`` as the eval stage does and capture, per text, the student's input ids, its
    masked positions and its logits there (spied inside ``paired_scores``)."""
    from mergedistill import heads, heldout_eval

    captured = {"logits": []}
    real_scores, real_logits = heldout_eval.paired_scores, heads.masked_lm_logits

    def spy_scores(student_, teacher_, id_map_, s_set, t_set, s_masked, t_masked, *rest):
        captured["ids"], captured["masked"] = s_set.sequences, s_masked
        return real_scores(student_, teacher_, id_map_, s_set, t_set, s_masked, t_masked, *rest)

    def spy_logits(model, *args, **kwargs):
        logits, outputs = real_logits(model, *args, **kwargs)
        if model is student:
            captured["logits"].append(logits.float())
        return logits, outputs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(heldout_eval, "paired_scores", spy_scores)
        patch.setattr(heads, "masked_lm_logits", spy_logits)
        heldout_eval.compare_student(
            student, teacher, id_map, texts, cfg.cache.top_k, pll_paragraphs=0, student_tokenizer=unified
        )
    counts = [int(m.sum()) for m in captured["masked"]]
    logits = torch.cat(captured["logits"]).split(counts)
    return [
        (ids.tolist(), np.flatnonzero(m).tolist(), lg)
        for ids, m, lg in zip(captured["ids"], captured["masked"], logits)
    ]


def trained_ids(cfg, teacher, id_map, text, lang, unified):
    """The student input ids training builds for ``text`` alone (``data`` stream + plan, masking undone)."""
    from mergedistill.data import DataPlan, make_stream

    stream = make_stream(
        lang, teacher, [text], id_map, cfg.data.max_length, cfg.data.whole_word, student_tokenizer=unified
    )
    plan = DataPlan([stream], 1, 1, cfg.seed, cfg.data.sampling_alpha, cfg.data.mlm_probability, cfg.data.mask_seed)
    batch = plan.batch(0)
    return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])[0].tolist()


def run_export_in_fresh_python(export: Path, tokenization: str, items: list[dict], tmp_path: Path) -> dict:
    (tmp_path / "request.json").write_text(json.dumps({"tokenization": tokenization, "items": items}), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(HELPER), str(export), str(tmp_path / "request.json"), str(tmp_path / "result.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return read_json(tmp_path / "result.json")


@pytest.mark.parametrize("arch, tokenization", VARIANTS)
def test_export_predicts_what_the_eval_path_predicts(arch, tokenization, tiny_runs, tmp_path):
    from transformers import AutoModelForMaskedLM

    from mergedistill.teachers import load_teachers
    from mergedistill.vocab import SPECIAL_IDS, load_routed_tokenizer, load_vocab
    from mergedistill.vocab.store import unified_tokenizer

    run = tiny_runs.get(arch, tokenization)
    cfg, out = run.cfg(), run.out
    evaluated = {
        row["lang"]: row["teacher"] for row in read_json(out / "eval" / "eval.json")["rows"]
    }  # language -> teacher
    assert sorted(evaluated) == sorted(cfg.corpus.languages)
    merged = load_vocab(out / "vocab")
    teachers = load_teachers(cfg, set(evaluated.values()))
    student = AutoModelForMaskedLM.from_pretrained(out / "train" / "model").eval()  # what the eval stage scores
    assert student.config.model_type == arch
    unified = unified_tokenizer(out / "vocab") if tokenization == "unified" else None
    routed = load_routed_tokenizer(out / "export")
    # a routed student's top-level tokenizer is a guard that AutoTokenizer refuses (tests/test_run_pipeline.py)
    top_level = read_json(out / "export" / "tokenizer_config.json")
    assert (top_level.get("tokenizer_class") == "MergedistillRoutedTokenizer") == (tokenization == "routed")

    items, expected = [], []
    for lang in cfg.corpus.languages:
        teacher = teachers[evaluated[lang]]
        id_map = merged.id_maps[teacher.name]
        texts = held_out_texts(cfg, teacher, unified, lang)
        predictions = eval_path(student, teacher, id_map, texts, cfg, unified)
        assert len(predictions) == len(texts)
        if tokenization == "routed":  # the documented way back to the training inputs, through mergedistill
            assert routed.encode(texts, lang) == [ids for ids, _, _ in predictions]
        for text, (ids, masked, logits) in zip(texts, predictions):
            assert trained_ids(cfg, teacher, id_map, text, lang, unified) == ids, (lang, text)
            items.append({"lang": lang, "text": text, "masked": masked})
            expected.append((ids, logits))
    assert sum(len(item["masked"]) for item in items) >= 2 * len(cfg.corpus.languages)

    result = run_export_in_fresh_python(out / "export", tokenization, items, tmp_path)
    worst = 0.0
    for item, got, (ids, logits) in zip(items, result["items"], expected):
        assert (got["mask_id"], got["unk_id"]) == (SPECIAL_IDS["mask"], SPECIAL_IDS["unk"])
        assert got["ids"] == ids, (item["lang"], item["text"])
        exported = torch.tensor(got["logits"])
        assert exported.shape == logits.shape
        worst = max(worst, float((exported - logits).abs().max()))
        assert torch.equal(exported.argmax(-1), logits.argmax(-1)), (item["lang"], item["text"])
    assert worst <= LOGIT_ATOL, f"exported logits differ from the eval path's by up to {worst:.2e}"


@pytest.mark.parametrize("arch, tokenization", VARIANTS)
def test_routed_folder_is_the_vocabularys_routing(arch, tokenization, tiny_runs):
    """routed/: one route per language to the teacher it was evaluated through, that teacher's tokenizer (same
    ids as the teacher's own on held-out text of the languages it serves) and its id map (the vocabulary's)."""
    from mergedistill.corpus import eval_texts
    from mergedistill.teachers import load_teachers
    from mergedistill.vocab import load_vocab

    run = tiny_runs.get(arch, tokenization)
    cfg, out = run.cfg(), run.out
    evaluated = {row["lang"]: row["teacher"] for row in read_json(out / "eval" / "eval.json")["rows"]}
    merged = load_vocab(out / "vocab")
    config = read_json(out / "export" / "routed" / "routed_tokenizer.json")
    assert config["routes"] == evaluated
    assert config["teachers"] == sorted(set(config["routes"].values()))
    assert config["max_length"] == cfg.data.max_length
    assert sorted(p.name for p in (out / "export" / "routed").iterdir()) == sorted(
        config["teachers"] + ["routed_tokenizer.json"]
    )
    teachers = load_teachers(cfg, set(config["teachers"]))
    vocab_size = read_json(out / "export" / "config.json")["vocab_size"]
    from transformers import AutoTokenizer

    for name in config["teachers"]:
        folder = out / "export" / "routed" / name
        id_map = np.load(folder / "id_map.npy")
        assert np.array_equal(id_map, merged.id_maps[name]) and len(id_map) == len(teachers[name].tokenizer)
        assert id_map.max() < vocab_size and (id_map >= -1).all()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        for lang in (lang for lang, teacher in config["routes"].items() if teacher == name):
            texts = eval_texts(cfg, lang, 10)
            assert tokenizer(texts)["input_ids"] == teachers[name].tokenizer(texts)["input_ids"], (name, lang)
