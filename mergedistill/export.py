"""Export-only helpers: the model card, the routed export's tokenizer files and the fill-mask examples.

``stages.stage_export`` writes a plain HuggingFace checkpoint of the student; these pure-ish helpers fill in
what goes next to it (README.md, routed/ routes, tokenizer_config.json for routed students, examples).
"""

from __future__ import annotations

import json
from pathlib import Path

from mergedistill import io
from mergedistill.io import read_json


def model_card(cfg, eval_data, assignment) -> str:
    from mergedistill.run_report import eval_table

    langs = sorted(assignment)
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: fill-mask",
            "license: mpl-2.0",
            "language:",
            *[f"- {lang}" for lang in langs],
            "tags:",
            "- mergedistill",
            "- knowledge-distillation",
            "---",
            "",
            f"# {cfg.name}: a multilingual student distilled by mergedistill",
            "",
            f"A BERT-style masked-LM distilled from several teachers (MergeDistill-style, {cfg.data.tokenization} tokenization):",
            "",
            *[f"- {lang}: {', '.join(names)}" for lang, names in sorted(assignment.items())],
            "",
            *(
                [
                    "Load it with plain `transformers` (no mergedistill needed):",
                    "",
                    "```python",
                    "from transformers import pipeline",
                    "fill = pipeline('fill-mask', model='PATH')",
                    "fill('Click [MASK] to save.')",
                    "```",
                    "",
                    "The top-level tokenizer is the unified student tokenizer over the merged vocabulary, the one the student was",
                    "trained on (`data.tokenization: unified`): it segments each language as that language's teacher does.",
                ]
                if cfg.data.tokenization == "unified"
                else [
                    "The student was trained on routed tokenization (MergeDistill's): each language's text through its teacher's",
                    "tokenizer, mapped to the student's ids. So it needs the language of its input, and `AutoTokenizer` refuses",
                    "this export (no one tokenizer segments as in training; its top-level tokenizer files are a guard). `routed/` holds the teachers'",
                    "tokenizers and id maps; load them with mergedistill:",
                    "",
                    "```python",
                    "import torch",
                    "from transformers import AutoModelForMaskedLM",
                    "from mergedistill.vocab import load_routed_tokenizer",
                    "",
                    "tokenizer = load_routed_tokenizer('PATH')  # language -> teacher tokenizer + id map",
                    "model = AutoModelForMaskedLM.from_pretrained('PATH').eval()",
                    f"ids = tokenizer.encode('Click here to save.', lang='{langs[0]}')  # student ids, as in training",
                    "ids[2] = 4  # the student's [MASK] id",
                    "top = model(torch.tensor([ids])).logits[0, 2].argmax()",
                    "```",
                ]
            ),
            "",
            "## Evaluation (held-out LibreOffice help paragraphs)",
            "",
            eval_table(eval_data["rows"]),
            "",
        ]
    )


def route_through_evaluated_teachers(routed_dir: Path, routes: dict) -> None:
    """Point each language of an exported routed tokenizer at the teacher it was evaluated through (the vocab
    stage routes through the first candidate; min-ce/weighted languages are served mostly by another)."""
    from mergedistill.vocab.tokenize import ROUTED_CONFIG

    config = read_json(routed_dir / ROUTED_CONFIG)
    wanted = {lang: name for lang, name in routes.items() if name in config["teachers"]}
    if any(config["routes"].get(lang) != name for lang, name in wanted.items()):
        config["routes"] = {**config["routes"], **wanted}
        io.write_text_atomic(routed_dir / ROUTED_CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")


ROUTED_GUIDE = (
    "this is a routed mergedistill student: each language's text goes through its teacher's tokenizer; load them "
    "with mergedistill.vocab.load_routed_tokenizer(PATH) and encode(text, lang=...)"
)
# A routed export's top-level tokenizer, a guard: AutoTokenizer / pipeline("fill-mask") must refuse the directory
# (no single tokenizer segments as in training) with a line that names load_routed_tokenizer. transformers loads
# a tokenizer.json, then checks `padding_side` in its base __init__ and raises "Padding side should be selected
# between 'right' and 'left', current value: <ROUTED_GUIDE>": the one place its own error carries our text
# (without a tokenizer.json it stops earlier, with a generic "Couldn't instantiate the backend tokenizer").
# The class name is one transformers does not know, so no class of the model's type is built instead.
ROUTED_TOKENIZER_CONFIG = {
    "tokenizer_class": "MergedistillRoutedTokenizer",
    "padding_side": f"none ({ROUTED_GUIDE})",
    "truncation_side": f"none ({ROUTED_GUIDE})",
    "note": ROUTED_GUIDE,
}


def write_routed_guard(export_dir: Path) -> None:
    """The guard tokenizer.json + tokenizer_config.json of a routed export (see ``ROUTED_TOKENIZER_CONFIG``);
    its tokenizer.json maps every text to [UNK] should someone override both sides anyway."""
    from tokenizers import Tokenizer, models

    guard = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    io.write_text_atomic(Path(export_dir) / "tokenizer.json", guard.to_str())
    io.write_json_atomic(Path(export_dir) / "tokenizer_config.json", ROUTED_TOKENIZER_CONFIG)


def routed_fill_mask_examples(model, export_dir: Path, vocab_dir: Path, texts: dict, per_language: int) -> dict:
    """Language -> up to ``per_language`` fill-mask examples of a routed student (on its device), through the
    routed tokenizers it was trained on, language by language."""
    from mergedistill.heldout_eval import routed_fill_mask
    from mergedistill.vocab import load_routed_tokenizer, load_vocab

    routed, pieces = load_routed_tokenizer(export_dir), load_vocab(vocab_dir).pieces
    examples = {}
    for lang, paragraphs in texts.items():
        items = []
        for text in paragraphs:
            example = routed_fill_mask(model, routed, pieces, text, lang)
            if example is not None:
                items.append(example)
            if len(items) >= per_language:
                break
        examples[lang] = items
    return examples


def pipeline_fill_mask_examples(fill, max_positions: int, texts: dict, per_language: int) -> dict:
    """Language -> up to ``per_language`` fill-mask examples from a ``transformers`` fill-mask ``pipeline`` over
    the exported directory: the middle word (the middle character for ja/zh) of each paragraph masked."""
    limit = max_positions - 2
    examples = {}
    for lang, paragraphs in texts.items():
        items = []
        for text in paragraphs:
            words = text.split()
            if len(words) >= 4 or (lang in ("ja", "zh") and len(text) > 8):
                if lang in ("ja", "zh"):
                    middle = len(text) // 2
                    masked = text[:middle] + fill.tokenizer.mask_token + text[middle + 1 :]
                else:
                    middle = len(words) // 2
                    masked = " ".join(words[:middle] + [fill.tokenizer.mask_token] + words[middle + 1 :])
                if len(fill.tokenizer(masked)["input_ids"]) > limit:
                    continue  # longer than the student's positions
                predictions = fill(masked, top_k=3)
                items.append(
                    {
                        "text": masked,
                        "predictions": [{"token": p["token_str"], "score": float(p["score"])} for p in predictions],
                    }
                )
            if len(items) >= per_language:
                break
        examples[lang] = items
    return examples


def exported_ids_check(export_dir: Path, trained_tokenizer, texts: dict) -> dict:
    """Per language: how many held-out paragraphs the exported ``AutoTokenizer`` turns into exactly the ids the
    student was trained on (``[CLS]`` + the training tokenizer's pieces + ``[SEP]``); the eval table's student
    column is what ``AutoTokenizer`` users get only where these are all equal."""
    from transformers import AutoTokenizer

    from mergedistill.vocab.merge import SPECIAL_IDS

    exported = AutoTokenizer.from_pretrained(export_dir)
    out = {}
    for lang, paragraphs in sorted(texts.items()):
        trained = trained_tokenizer(list(paragraphs), add_special_tokens=False)["input_ids"]
        loaded = exported(list(paragraphs))["input_ids"]
        equal = sum(ids == [SPECIAL_IDS["cls"], *t, SPECIAL_IDS["sep"]] for ids, t in zip(loaded, trained))
        out[lang] = {"paragraphs": len(trained), "ids_equal": int(equal)}
    return out
