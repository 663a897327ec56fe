"""Run by tests/test_export.py in a fresh interpreter: what a user with only `transformers` (and numpy, which it
needs) gets from an exported student. Never imports mergedistill (checked at the end).

    python export_predict.py EXPORT_DIR REQUEST.json RESULT.json

REQUEST: {"tokenization": "unified" | "routed", "items": [{"lang", "text", "masked": [positions]}]}.
RESULT: per item the student input ids read from the export's own files (unified: the top-level tokenizer;
routed: routed/routed_tokenizer.json picks the language's teacher tokenizer under routed/, whose ids go
through that teacher's id_map.npy, -1 meaning [UNK], the id map also giving the student's mask and unk ids)
and the model's logits at the masked positions (each replaced by the mask token) from a plain full forward.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer


def routed_encoder(export: Path):
    """encode(text, lang) -> (student ids, student mask id, student unk id) through routed/."""
    config = json.loads((export / "routed" / "routed_tokenizer.json").read_text(encoding="utf-8"))
    tokenizers = {name: AutoTokenizer.from_pretrained(export / "routed" / name) for name in config["teachers"]}
    id_maps = {name: np.load(export / "routed" / name / "id_map.npy") for name in config["teachers"]}

    def encode(text: str, lang: str):
        name = config["routes"][lang]
        tokenizer, id_map = tokenizers[name], id_maps[name]
        unk = int(id_map[tokenizer.unk_token_id])
        mapped = id_map[np.asarray(tokenizer(text, truncation=True, max_length=config["max_length"])["input_ids"])]
        return np.where(mapped < 0, unk, mapped).tolist(), int(id_map[tokenizer.mask_token_id]), unk

    return encode


def main(export: str, request_path: str, result_path: str) -> None:
    export = Path(export)
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    if request["tokenization"] == "unified":
        tokenizer = AutoTokenizer.from_pretrained(export)  # the top-level tokenizer

        def encode(text, lang):
            return tokenizer(text)["input_ids"], tokenizer.mask_token_id, tokenizer.unk_token_id
    else:
        encode = routed_encoder(export)
    results = []
    for item in request["items"]:
        ids, mask_id, unk_id = encode(item["text"], item["lang"])
        inputs = torch.tensor([ids])
        inputs[0, item["masked"]] = mask_id
        with torch.inference_mode():
            logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0, item["masked"]]
        results.append({"ids": ids, "mask_id": mask_id, "unk_id": unk_id, "logits": logits.tolist()})
    assert not any(name == "mergedistill" or name.startswith("mergedistill.") for name in sys.modules), (
        "mergedistill was imported"
    )
    Path(result_path).write_text(json.dumps({"items": results}), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
