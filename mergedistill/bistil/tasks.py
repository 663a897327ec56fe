"""The two cross-lingual tasks built from the embedded corpus (aligned LibreOffice help paragraphs).

``topic``: sequence classification of a paragraph's help module (its corpus ``module`` field).
``topic-nocopy``: the same, with every word that also occurs verbatim in the aligned paragraph of the other
language removed (UI and function names, numbers, product names), so what transfers is meaning, not strings
both languages share: a model without cross-lingual alignment sits near the majority class.
``keyterms``: word-level tagging with silver labels from small per-language lists: PRODUCT (LibreOffice
application names), KEY (keyboard keys, localized: en Ctrl/Shift, de Strg/Umschalt/Eingabetaste, ...)
and NUM (words with a digit). Trained on the source language, it transfers only if the model relates
e.g. "Strg" to "Ctrl" through context. The corpus splits are by paragraph-id hash, the same in every
language, so source train and target test share no paragraph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mergedistill.errors import UserError

MODULES = ("shared", "scalc", "sbasic", "swriter", "simpress", "sdatabase", "smath", "schart", "sdraw")
KEYTERM_LABELS = ("O", "PRODUCT", "KEY", "NUM")
PRODUCTS = {"LibreOffice", "OpenOffice", "StarOffice", "Writer", "Calc", "Impress"}
FUNCTION_KEYS = {f"F{i}" for i in range(1, 13)}
KEYS = {
    "en": {"Ctrl", "Shift", "Alt", "Esc", "Backspace", "Cmd", "PgUp", "PgDn", "Fn"},
    "de": {"Strg", "Umschalt", "Alt", "Esc", "Entf", "Eingabetaste", "Rücktaste", "Fn"},
    "fr": {"Ctrl", "Maj", "Alt", "Échap", "Suppr", "Entrée", "Fn"},
    "es": {"Ctrl", "Mayús", "Alt", "Esc", "Supr", "Intro", "Fn"},
    "ru": {"Ctrl", "Shift", "Alt", "Esc", "Fn"},
    "ja": {"Ctrl", "Shift", "Alt", "Esc", "Fn"},
    "zh": {"Ctrl", "Shift", "Alt", "Esc", "Fn"},
}
WORD = re.compile(r"\w+|[^\w\s]")
TASK_NAMES = ("topic", "topic-nocopy", "keyterms")
SEQUENCE_TASKS = ("topic", "topic-nocopy")


def words_of(text: str) -> list[str]:
    return WORD.findall(text)


def drop_copies(text: str, other_text: str) -> str:
    """``text`` without the words (\\w+ runs) that also occur verbatim in ``other_text``; spaces collapsed."""
    shared = set(re.findall(r"\w+", other_text))
    kept = re.sub(r"\w+", lambda match: "" if match.group(0) in shared else match.group(0), text)
    return " ".join(kept.split())


def keyterm_tags(words: list[str], lang: str) -> list[int]:
    keys = KEYS.get(lang)
    if keys is None:
        raise UserError(
            f"keyterms task: no key-name list for language {lang!r}; use one of {', '.join(KEYS)} or drop the task"
        )
    tags = []
    for word in words:
        if word in PRODUCTS:
            tags.append(1)
        elif word in keys or word in FUNCTION_KEYS:
            tags.append(2)
        elif any(ch.isdigit() for ch in word):
            tags.append(3)
        else:
            tags.append(0)
    return tags


@dataclass
class TaskData:
    task: str
    lang: str
    ids: list
    inputs: list  # texts (topic) or word lists (keyterms)
    labels: list  # ints (topic) or lists of ints (keyterms)

    @property
    def kind(self) -> str:
        return "sequence" if self.task in SEQUENCE_TASKS else "token"

    @property
    def num_labels(self) -> int:
        return len(MODULES) if self.task in SEQUENCE_TASKS else len(KEYTERM_LABELS)


def build_task(task: str, lang: str, records, partner_texts: dict | None = None) -> TaskData:
    """Pure core: ``records`` = dicts with id, module, text; ``partner_texts`` (id -> text of the aligned
    paragraph in the other language) is required by ``topic-nocopy`` and drops records without a partner."""
    if task not in TASK_NAMES:
        raise UserError(f"phase2.tasks: unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
    if task == "topic-nocopy" and partner_texts is None:
        raise ValueError("topic-nocopy needs the aligned paragraphs of the other language (partner_texts)")
    ids, inputs, labels = [], [], []
    for record in records:
        if task in SEQUENCE_TASKS:
            if record["module"] not in MODULES:
                continue
            text = record["text"]
            if task == "topic-nocopy":
                if record["id"] not in partner_texts:
                    continue
                text = drop_copies(text, partner_texts[record["id"]])
                if not text.strip():
                    continue
            ids.append(record["id"])
            inputs.append(text)
            labels.append(MODULES.index(record["module"]))
        else:
            words = words_of(record["text"])
            if not words:
                continue
            ids.append(record["id"])
            inputs.append(words)
            labels.append(keyterm_tags(words, lang))
    return TaskData(task, lang, ids, inputs, labels)


def load_task(
    task: str,
    lang: str,
    split: str,
    limit: int | None = None,
    corpus_dir: str | None = None,
    partner: str | None = None,
) -> TaskData:
    """``partner``: the other language of the pair, whose aligned paragraphs ``topic-nocopy`` reads."""
    from mergedistill.corpus import load_split

    dataset = load_split(lang, split, corpus_dir or None)
    if limit is not None:
        dataset = dataset.shuffle(seed=0).select(range(min(limit, len(dataset))))
    partner_texts = None
    if task == "topic-nocopy":
        other = load_split(partner, split, corpus_dir or None)
        partner_texts = dict(zip(other["id"], other["text"]))
    return build_task(task, lang, dataset, partner_texts)


def encode(data: TaskData, tokenizer, max_length: int) -> list[dict]:
    """One dict per example: input_ids (list) and labels (int, or per-token list with -100 off first sub-words)."""
    if data.kind == "sequence":
        enc = tokenizer(data.inputs, truncation=True, max_length=max_length)
        return [{"input_ids": ids, "labels": label} for ids, label in zip(enc["input_ids"], data.labels)]
    enc = tokenizer(data.inputs, is_split_into_words=True, truncation=True, max_length=max_length)
    out = []
    for row, tags in enumerate(data.labels):
        previous, labels = None, []
        for word in enc.word_ids(row):
            labels.append(-100 if word is None or word == previous else tags[word])
            previous = word
        out.append({"input_ids": enc["input_ids"][row], "labels": labels})
    return out


def collate(examples: list[dict], pad_id: int) -> dict:
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    token_level = isinstance(examples[0]["labels"], list)
    labels = (
        torch.full((len(examples), width), -100, dtype=torch.long)
        if token_level
        else torch.zeros(len(examples), dtype=torch.long)
    )
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.as_tensor(example["input_ids"])
        mask[row, :n] = 1
        if token_level:
            labels[row, :n] = torch.as_tensor(example["labels"])
        else:
            labels[row] = example["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_batches(examples: list[dict], batch_size: int, steps: int, pad_id: int, seed: int) -> list[dict]:
    """``steps`` shuffled batches (reshuffled every epoch), deterministic for a seed."""
    from mergedistill.masking import example_rng

    order, epoch, out = [], 0, []
    for _ in range(steps):
        while len(order) < batch_size:
            order += example_rng(seed, "task-order", epoch).permutation(len(examples)).tolist()
            epoch += 1
        out.append(collate([examples[i] for i in order[:batch_size]], pad_id))
        order = order[batch_size:]
    return out


def eval_batches(examples: list[dict], batch_size: int, pad_id: int) -> list[dict]:
    return [collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
