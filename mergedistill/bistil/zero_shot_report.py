"""The BiStil report: one zero-shot table per task (teacher, BiStil and the baselines), sizes and speed."""

from __future__ import annotations

NAMES = {
    "teacher": "task teacher (MMT fine-tuned on source)",
    "bistil": "BiStil (phase 1 + KD + LT-SFT)",
    "dense": "BiStil without SFT (dense KD)",
    "self-taught": "self-taught (gold labels only, LT-SFT)",
    "scratch": "scratch student (random init, bilingual MLM without teacher, then KD + LT-SFT)",
    "random-init": "random-init student (random init, bilingual phase-1 distillation, then KD + LT-SFT)",
}


def verdict(rows: list[dict], target_ratio: float, min_speedup: float, min_gain_over_scratch: float) -> str:
    by = {r["model"]: r for r in rows}
    if "bistil" not in by or "teacher" not in by:
        return "no BiStil row"
    b = by["bistil"]
    ok_acc = b["target_ratio"] >= target_ratio
    ok_speed = b["speedup"] >= min_speedup
    out = (
        f"BiStil keeps {b['target_ratio']:.1%} of the teacher's zero-shot target score (goal ≥ {target_ratio:.0%}: "
        f"{'met' if ok_acc else 'NOT met'}) at {b['speedup']:.2f}x CPU speed-up (goal ≥ {min_speedup:.1f}x: "
        f"{'met' if ok_speed else 'NOT met'})"
    )
    scratch = by.get("scratch")
    if scratch:
        gain = scratch["bistil_minus"]
        far = gain["diff"] >= min_gain_over_scratch and gain["low"] > 0
        out += (
            f"; scratch {scratch['target']:.3f}, BiStil − scratch = {gain['diff']:+.3f} (95 % CI {gain['low']:+.3f} to "
            f"{gain['high']:+.3f}) (goal ≥ {min_gain_over_scratch:+.3f} with the interval above 0: {'met' if far else 'NOT met'})"
        )
        # a student keeping the teacher's score cannot be further above scratch than the teacher is
        out += f"; teacher − scratch = {by['teacher']['target'] - scratch['target']:+.3f} (about the most a faithful student can gain)"
    return out + "."


def table(rows: list[dict], metric: str, source: str, target: str) -> str:
    head = (
        f"| model | {source} (in-language) {metric} | {target} zero-shot {metric} | % of teacher ({target}) | params | "
        f"body params changed | GFLOPs/seq | latency ms | speed-up |"
    )
    head += f" BiStil − model ({target}, 95 % CI) |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        changed = "—" if r.get("changed") is None else f"{r['changed']:,} ({r['changed_fraction']:.1%})"
        gain = r.get("bistil_minus")
        gain_text = "—" if gain is None else f"{gain['diff']:+.3f} ({gain['low']:+.3f} to {gain['high']:+.3f})"
        lines.append(
            f"| {NAMES.get(r['model'], r['model'])} | {r['source']:.3f} | {r['target']:.3f} | {r['target_ratio']:.1%} | "
            f"{r['params']:,} | {changed} | {r['flops'] / 1e9:.3f} | {r['latency_ms']:.1f} | {r['speedup']:.2f}x | {gain_text} |"
        )
    return "\n".join(lines)


def render(results: dict) -> str:
    cfg = results["config"]
    trim = results["trim"]
    out = [
        f"# BiStil report: {cfg['name']} ({cfg['source']} -> {cfg['target']})",
        "",
        f"Teacher `{cfg['teacher']}`. Vocabulary trimmed from {trim['original_vocab']:,} to {trim['kept_vocab']:,} pieces "
        f"(θ = {trim['theta']:g}); parameters {trim['params_before']:,} -> {trim['params_after']:,}. "
        f"Student: {results['student_layers']} of {results['teacher_layers']} layers (s = {cfg['phase1']['layer_stride']}, "
        f"{cfg['phase1']['layer_choice']}); phase 1 best eval loss {results['phase1_best']['best_eval_loss']:.4f} at step "
        f"{results['phase1_best']['best_step']}.",
        "",
        f"Latency: median {results.get('device', 'cpu').split(':')[0].replace('cpu', 'CPU').replace('cuda', 'GPU')} forward time of a batch of {results['latency_batch']} {cfg['target']} test examples, "
        f"{results['threads']} torch thread(s), models measured round-robin. FLOPs: analytic estimate at the batch's mean length "
        f"({results['mean_length']:.1f} tokens).",
        "",
    ]
    for task, entry in results["tasks"].items():
        out += [
            f"## Task `{task}` ({entry['metric']}; {entry['n_train']:,} {cfg['source']} training examples, "
            f"{entry['n_source_test']:,} {cfg['source']} / {entry['n_target_test']:,} {cfg['target']} test examples)",
            "",
            table(entry["rows"], entry["metric"], cfg["source"], cfg["target"]),
            "",
            entry["verdict"],
            "",
        ]
        if entry.get("majority") is not None:
            out += [
                f"Always predicting the most frequent {cfg['source']} training label scores {entry['majority']:.3f} on "
                f"{cfg['target']}.",
                "",
            ]
    out += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results.get("times", {}).items()), ""]
    return "\n".join(out)
