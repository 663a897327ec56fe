"""Zero-shot evaluation: accuracy / F1, model sizes, an analytic FLOPs estimate and CPU latency."""

from __future__ import annotations

import statistics
import time

import numpy as np


def predict(model, batches):
    """(predictions, gold, example index) over scored rows: examples (sequence tasks) or labelled tokens
    (token tasks); the example index lets the bootstrap resample whole examples."""
    import torch

    from mergedistill.device import device_of, to_device

    preds, golds, examples, offset = [], [], [], 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            inputs = to_device(
                {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, device_of(model)
            )
            logits = model(**inputs).logits.cpu()
            labels = batch["labels"]
            rows = torch.arange(offset, offset + len(labels))
            offset += len(labels)
            if labels.dim() > 1:
                keep = labels != -100
                rows = rows.unsqueeze(1).expand_as(labels)[keep]
                logits, labels = logits[keep], labels[keep]
            preds.append(logits.argmax(-1).numpy())
            golds.append(labels.numpy())
            examples.append(rows.numpy())
    return np.concatenate(preds), np.concatenate(golds), np.concatenate(examples)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else 0.0


def majority_accuracy(train_labels, test_labels) -> float:
    """Accuracy of always predicting the most frequent training label: the floor a sequence task's scores sit on."""
    most = np.bincount(np.asarray(train_labels)).argmax()
    return float(np.mean(np.asarray(test_labels) == most))


def f1_scores(pred: np.ndarray, gold: np.ndarray, labels, ignore=()) -> dict:
    """Per-label F1, their macro mean, and micro F1 over the labels not in ``ignore``."""
    per, tp_all, fp_all, fn_all = {}, 0, 0, 0
    for label in labels:
        if label in ignore:
            continue
        tp = int(((pred == label) & (gold == label)).sum())
        fp = int(((pred == label) & (gold != label)).sum())
        fn = int(((pred != label) & (gold == label)).sum())
        per[label] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    micro = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else 0.0
    return {"per_label": per, "macro": float(np.mean(list(per.values()))) if per else 0.0, "micro": micro}


def task_metrics(pred, gold, kind: str, num_labels: int) -> dict:
    """Sequence tasks: accuracy + macro-F1 (score = accuracy). Token tasks: micro-F1 over non-O labels (score)."""
    if kind == "sequence":
        f1 = f1_scores(pred, gold, range(num_labels))
        return {
            "score": accuracy(pred, gold),
            "accuracy": accuracy(pred, gold),
            "macro_f1": f1["macro"],
            "n": int(len(gold)),
        }
    f1 = f1_scores(pred, gold, range(num_labels), ignore=(0,))
    return {"score": f1["micro"], "micro_f1": f1["micro"], "accuracy": accuracy(pred, gold), "n": int(len(gold))}


def example_scores(pred: np.ndarray, gold: np.ndarray, examples: np.ndarray, n_examples: int, kind: str) -> tuple:
    """Per-example (numerator, denominator) whose sums give the task score: accuracy = correct / 1 (sequence),
    micro-F1 over the non-O labels = 2·tp / (2·tp + fp + fn) (token)."""
    if kind == "sequence":
        num, den = (pred == gold).astype(np.float64), np.ones(len(gold))
    else:
        tp = (pred == gold) & (gold != 0)
        fp = (pred != 0) & (pred != gold)
        fn = (gold != 0) & (pred != gold)
        num, den = 2.0 * tp, 2.0 * tp + fp + fn
    return np.bincount(examples, num, n_examples), np.bincount(examples, den, n_examples)


def paired_bootstrap(a: tuple, b: tuple, samples: int = 1000, seed: int = 0) -> dict:
    """Score(a) − score(b) on the same examples, and its 95 % percentile interval over ``samples`` resamples
    of the examples (Efron & Tibshirani; paired: one resample serves both models)."""
    idx = np.random.default_rng(seed).integers(0, len(a[0]), size=(samples, len(a[0])))

    def point(stats):
        return stats[0].sum() / max(stats[1].sum(), 1e-12)

    def resampled(stats):
        return stats[0][idx].sum(1) / np.maximum(stats[1][idx].sum(1), 1e-12)

    diffs = resampled(a) - resampled(b)
    return {
        "diff": float(point(a) - point(b)),
        "low": float(np.percentile(diffs, 2.5)),
        "high": float(np.percentile(diffs, 97.5)),
    }


def parameter_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return {"total": int(total), "embeddings": int(embeddings), "non_embedding": int(total - embeddings)}


def flops_per_sequence(config, seq_len: int, num_labels: int, token_level: bool) -> int:
    """Forward FLOPs (2 × multiply-adds) of an encoder classifier; embedding look-ups count as 0.

    Per layer: Q, K, V, O projections 4·T·H², feed-forward 2·T·H·I, attention scores and context 2·T²·H.
    Head: pooler H² + classifier H·C (sequence) or T·H·C (token).
    """
    t, h, i = seq_len, config.hidden_size, config.intermediate_size
    per_layer = 4 * t * h * h + 2 * t * h * i + 2 * t * t * h
    head = t * h * num_labels if token_level else h * h + h * num_labels
    return int(2 * (config.num_hidden_layers * per_layer + head))


def latency(model, batch: dict, repeats: int = 10) -> float:
    """Median seconds of one forward pass on the model's device (one warm-up pass first)."""
    import torch

    from mergedistill.device import device_of, to_device

    model.eval()
    inputs = to_device({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, device_of(model))
    times = []
    with torch.inference_mode():
        model(**inputs)
        for _ in range(repeats):
            start = _clock(model)
            model(**inputs)
            times.append(_clock(model) - start)
    return statistics.median(times)


def interleaved_latency(models: dict, batch: dict, repeats: int = 10) -> dict:
    """name -> median seconds, measured round-robin so load on a shared machine hits every model alike."""
    import torch

    from mergedistill.device import device_of, to_device

    host = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs = {name: to_device(host, device_of(model)) for name, model in models.items()}
    times = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            model.eval()
            model(**inputs[name])
        for _ in range(repeats):
            for name, model in models.items():
                start = _clock(model)
                model(**inputs[name])
                times[name].append(_clock(model) - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _clock(model) -> float:
    """perf_counter after the model's GPU (if any) has finished its queued work."""
    from mergedistill.device import device_of

    device = device_of(model)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def evaluate_all(cfg, stage_dirs: dict, device) -> dict:
    """Evaluate the task teacher and every trained student on source and target test data; ``stage_dirs``:
    the output directory of each BiStil stage by name (``recipe.bistil_stages``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from mergedistill.bistil.phase2 import load_student
    from mergedistill.bistil.recipe import task_data, task_teacher_path, variant_name
    from mergedistill.bistil.tasks import encode, eval_batches, load_task
    from mergedistill.config import to_dict
    from mergedistill.io import read_manifest

    tokenizer = AutoTokenizer.from_pretrained(str(stage_dirs["trim"]))
    trim = read_manifest(stage_dirs["trim"])
    phase1 = read_manifest(stage_dirs["phase1"])
    results = {
        "config": to_dict(cfg),
        "trim": {k: trim[k] for k in ("original_vocab", "kept_vocab", "theta", "params_before", "params_after")},
        "phase1_best": phase1["best"],
        "student_layers": phase1["layers"],
        "teacher_layers": phase1["teacher_layers"],
        "threads": torch.get_num_threads(),
        "latency_batch": cfg.eval.latency_batch_size,
        "device": str(device),
        "tasks": {},
    }
    for task in cfg.phase2.tasks:
        source = load_task(task, cfg.source, "test", cfg.eval.max_test_examples, cfg.corpus_dir, partner=cfg.target)
        target = load_task(task, cfg.target, "test", cfg.eval.max_test_examples, cfg.corpus_dir, partner=cfg.source)
        kind, num_labels = source.kind, source.num_labels
        cls = AutoModelForSequenceClassification if kind == "sequence" else AutoModelForTokenClassification
        models = {"teacher": cls.from_pretrained(str(task_teacher_path(cfg, stage_dirs, task))).to(device).eval()}
        manifests = {}
        for variant in cfg.phase2.variants:
            directory = stage_dirs[variant_name(task, variant)]
            manifests[variant] = read_manifest(directory)
            models[variant] = load_student(manifests[variant]["phase1"], directory, kind, num_labels).to(device)
        batches = {
            lang: eval_batches(encode(data, tokenizer, cfg.phase2.max_length), 64, tokenizer.pad_token_id)
            for lang, data in ((cfg.source, source), (cfg.target, target))
        }
        speed_examples = encode(target, tokenizer, cfg.phase2.max_length)[: cfg.eval.latency_batch_size]
        from mergedistill.bistil.tasks import collate

        speed_batch = collate(speed_examples, tokenizer.pad_token_id)
        mean_length = float(speed_batch["attention_mask"].sum(1).float().mean())
        latencies = interleaved_latency(models, speed_batch, cfg.eval.latency_repeats)
        rows, target_examples = [], {}
        for name, model in models.items():
            scores = {}
            for lang, b in batches.items():
                pred, gold, examples = predict(model, b)
                scores[lang] = task_metrics(pred, gold, kind, num_labels)
                if lang == cfg.target:
                    target_examples[name] = example_scores(pred, gold, examples, len(target.ids), kind)
            manifest = manifests.get(name)
            rows.append(
                {
                    "model": name,
                    "source": scores[cfg.source]["score"],
                    "target": scores[cfg.target]["score"],
                    "metrics": scores,
                    "params": parameter_counts(model)["total"],
                    "changed": manifest["changed"] if manifest else None,
                    "changed_fraction": manifest["changed"] / max(1, manifest["eligible"]) if manifest else None,
                    "flops": flops_per_sequence(model.config, round(mean_length), num_labels, kind == "token"),
                    "latency_ms": latencies[name] * 1000,
                }
            )
        teacher_row = rows[0]
        for row in rows:
            row["target_ratio"] = row["target"] / teacher_row["target"] if teacher_row["target"] else 0.0
            row["speedup"] = latencies["teacher"] / latencies[row["model"]]
            if row["model"] != "bistil" and "bistil" in target_examples:  # BiStil minus this model, 95 % interval
                row["bistil_minus"] = paired_bootstrap(
                    target_examples["bistil"], target_examples[row["model"]], seed=cfg.seed
                )
        from mergedistill.bistil.zero_shot_report import verdict

        results["mean_length"] = mean_length
        train = task_data(cfg, task)
        results["tasks"][task] = {
            "metric": "accuracy" if kind == "sequence" else "micro-F1 (PRODUCT/KEY/NUM)",
            "rows": rows,
            "n_train": len(train.ids),
            "n_source_test": len(source.ids),
            "n_target_test": len(target.ids),
            "majority": majority_accuracy(train.labels, target.labels) if kind == "sequence" else None,
            "verdict": verdict(rows, cfg.eval.target_ratio, cfg.eval.min_speedup, cfg.eval.min_gain_over_scratch),
        }
    return results
