"""The MergeDistill pipeline's stages, wired for ``mergedistill run`` (see ``pipeline`` for the mechanism).

    teachers -> select -> vocab [-> split] -> cache -> train ─┬─> eval -> export -> report
                                                └──> baseline ─┘   (the same student, gold MLM only)

(``split``, under select.strategy=min-ce only: which teacher serves each training paragraph, measured once.)

Each stage's output is a directory under ``cfg.output_dir``; its manifest fingerprints its config
sections and upstream outputs, so a re-run skips what is current and resumes what is not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from mergedistill import io
from mergedistill.config import to_yaml
from mergedistill.corpus import eval_texts, train_texts
from mergedistill.errors import UserError
from mergedistill.io import read_json
from mergedistill.pipeline import Stage, StageContext, run_stages
from mergedistill.ranks import world_from_env
from mergedistill.teachers import load_cards, load_teachers, teacher_inputs
from mergedistill.vocab.store import unified_tokenizer


# ------------------------------------------------------------------------------------------------ helpers
# ------------------------------------------------------------------------------------------------ stages
def stage_teachers(ctx: StageContext):
    """Build demo teachers that have a recipe (skipped when current); record every teacher."""
    from mergedistill.teachers import teachers_device
    from mergedistill.zoo import build_teacher

    cfg = ctx.cfg
    info = {}
    device = teachers_device(cfg)
    for card in load_cards(cfg):
        if card.build:
            build_teacher(card, seed=cfg.seed, corpus_dir=cfg.corpus.dir or None, log=ctx.log, device=device)
    for name, teacher in load_teachers(cfg).items():
        info[name] = {
            "source": teacher.card.source,
            "languages": teacher.languages,
            "family": teacher.vocab.family,
            "params": teacher.num_parameters(),
            "fingerprint": teacher.fingerprint(),
        }
    io.write_json_atomic(ctx.out / "teachers.json", info)
    return {"teachers": sorted(info)}


def stage_select(ctx: StageContext):
    """Score every (language, candidate teacher) on held-out text, then apply the selection strategy."""
    from mergedistill.heldout_eval import teacher_metrics
    from mergedistill.selection import Candidates, format_table, make_strategy, plot_heatmap

    cfg = ctx.cfg
    teachers = load_teachers(cfg)
    languages = tuple(cfg.corpus.languages)
    candidates = Candidates(languages, {name: t.languages for name, t in teachers.items()})
    scores = {}
    for lang in languages:
        texts = eval_texts(cfg, lang)
        for name in candidates.for_language(lang, cfg.select.candidates):
            ctx.log(f"[select] scoring {name} on {lang}")
            metrics = teacher_metrics(teachers[name], texts, pll_paragraphs=min(40, len(texts)))
            scores[(lang, name)] = {
                k: metrics[k] for k in ("acc", "ce", "pll_per_char", "pll_per_word", "fertility", "unk_rate")
            }
    strategy = make_strategy(cfg.select)
    assignment = strategy.assign(candidates, scores, {n: t.tokenizer_fingerprint() for n, t in teachers.items()})
    io.write_json_atomic(
        ctx.out / "assignment.json",
        {"strategy": cfg.select.strategy, "per_example": strategy.per_example, "assignment": assignment},
    )
    io.write_json_atomic(
        ctx.out / "scores.json", [{"lang": lang, "teacher": name, **m} for (lang, name), m in sorted(scores.items())]
    )
    io.write_text_atomic(ctx.out / "selection.md", format_table(scores, assignment) + "\n")
    plot_heatmap(scores, assignment, ctx.out / "selection_heatmap.png")
    return {"assignment": assignment}


def read_scores(select_dir: Path) -> dict:
    return {(r["lang"], r["teacher"]): r for r in read_json(select_dir / "scores.json")}


def stage_vocab(ctx: StageContext):
    from mergedistill.vocab import build_unified_tokenizer
    from mergedistill.vocab.build import build_vocab, write_vocab_dir
    from mergedistill.vocab.diagnostics import (
        agreement_rows,
        agreement_table,
        fertility_rows,
        fertility_table,
        merged_examples,
        overlap_table,
    )

    cfg = ctx.cfg
    assignment = read_json(ctx.inputs["select"] / "assignment.json")["assignment"]
    used = sorted({n for names in assignment.values() for n in names})
    teachers = load_teachers(cfg, used)
    texts = {lang: train_texts(cfg, lang) for lang in assignment}
    card_names = [card.name for card in load_cards(cfg)]
    unknown = sorted(set(cfg.vocab.min_freq_by_teacher) - set(card_names))
    if unknown:
        raise UserError(
            f"vocab.min_freq_by_teacher: no teacher card named {', '.join(unknown)} in teachers.cards "
            f"(names: {', '.join(card_names)})"
        )
    merged = build_vocab(
        teachers,
        assignment,
        texts,
        cfg.vocab.min_freq,
        cfg.vocab.max_size,
        cfg.vocab.unified_tokenizer,
        log=ctx.log,
        min_freq_by_teacher=dict(cfg.vocab.min_freq_by_teacher),
    )
    write_vocab_dir(ctx.out, merged, teachers, assignment, cfg.vocab.unified_tokenizer, cfg.data.max_length)
    held_out = {lang: eval_texts(cfg, lang, 100) for lang in assignment}
    unified = build_unified_tokenizer(merged) if cfg.vocab.unified_tokenizer else None
    report = [
        f"Student vocabulary: **{len(merged)}** pieces (5 specials"
        + (", 256 byte-fallback pieces" if unified is not None else "")
        + ").",
        "",
        overlap_table(merged),
        "",
        "Pieces per word on held-out text (each teacher on its languages, and the unified student tokenizer):",
        "",
        fertility_table(fertility_rows(held_out, teachers, unified)),
        "",
        "Examples of pieces merged from several teachers:",
        "",
    ]
    report += [f"- `{line}`" for line in merged_examples(merged, {n: t.tokenizer for n, t in teachers.items()})]
    if unified is not None:
        rows = agreement_rows(
            held_out, {lang: (names[0], teachers[names[0]]) for lang, names in assignment.items()}, unified, merged
        )
        io.write_json_atomic(ctx.out / "agreement.json", rows)
        report += [
            "",
            "The unified tokenizer against each language's teacher on held-out text (the teacher's pieces in the "
            "student convention: `▁` only where the text has a space): whitespace words and whole paragraphs segmented "
            "the same, byte-fallback pieces, and student pieces that get a distillation target (one teacher piece over "
            "the same characters that maps to it):",
            "",
            agreement_table(rows),
        ]
    io.write_text_atomic(ctx.out / "report.md", "\n".join(report) + "\n")
    return {"size": len(merged)}


def stage_split(ctx: StageContext):
    """min-ce: score every training paragraph with every candidate once; store who serves each (``mergedistill.plan``)."""
    from mergedistill.plan import write_split

    return write_split(ctx.cfg, ctx.inputs["select"], ctx.out, ctx.log)


def vocab_fingerprint(vocab_dir: Path) -> str:
    return io.read_manifest(vocab_dir)["fingerprint"]


DROPPED_SAMPLE_BATCHES = 20


def stage_cache(ctx: StageContext):
    from mergedistill.cache import build_cache, cache_fingerprint, finalize_cache, prepare_cache, sample_dropped
    from mergedistill.plan import make_plan

    cfg = ctx.cfg
    plan, teachers, merged = ctx.ranks.main_first(
        "data", lambda: make_plan(cfg, ctx.inputs["vocab"], ctx.inputs["select"], ctx.inputs.get("split"), log=ctx.log)
    )  # rank 0 builds the Arrow data, the others open it
    io.write_json_atomic(
        ctx.out / "plan.json",
        {
            "streams": {s.name: len(s.sequences) for s in plan.streams},
            "probabilities": dict(zip([s.name for s in plan.streams], plan.probabilities.tolist())),
            "served_examples": plan.served(),
            "served_by_language": plan.served_by_language(),
            "batches": plan.n_batches,
        },
    )
    if cfg.cache.mode == "online":  # the dropped top-k mass, measured on the plan's first batches
        n = min(plan.n_batches, DROPPED_SAMPLE_BATCHES)
        dropped = sample_dropped(
            plan,
            teachers,
            merged.id_maps,
            cfg.cache.top_k,
            n,
            cfg.cache.batch_size,
            merged.glued_maps,
            merged.spaced_maps,
        )
        return {"mode": "online", "dropped_topk_mass": dropped, "dropped_topk_mass_batches": n}
    fp = cache_fingerprint(plan, teachers, vocab_fingerprint(ctx.inputs["vocab"]), cfg.cache.top_k)
    ranks = ctx.ranks  # several ranks: each builds its share of the chunks, rank 0 seals the cache
    ranks.together("cache", lambda: prepare_cache(ctx.work / "topk", plan, cfg.cache.top_k, fp) if ranks.main else None)
    built = ranks.together(
        "cache",
        lambda: build_cache(
            ctx.work / "topk",
            plan,
            teachers,
            merged.id_maps,
            cfg.cache.top_k,
            fp,
            rank=ranks.rank,
            world=ranks.world,
            progress=ranks.main,
            batch_size=cfg.cache.batch_size,
            glued_maps=merged.glued_maps,
            spaced_maps=merged.spaced_maps,
        ),
    )  # resumable
    ctx.log(f"[cache] built {len(built)} chunk(s): {', '.join(map(str, built[:8]))}{' ...' if len(built) > 8 else ''}")
    if not ranks.main:
        return {}
    summary = finalize_cache(ctx.work / "topk", fp, plan)
    shutil.move(str(ctx.work / "topk"), ctx.out / "topk")
    masked = sum(int((plan.batch(i)["labels"] != -100).sum()) for i in range(min(20, plan.n_batches)))
    return {
        "mode": "offline",
        "cache_fingerprint": fp,
        **summary,
        "bytes_per_masked_token_estimate": summary["bytes"] / max(1, masked * plan.n_batches / min(20, plan.n_batches)),
    }


def _targets(cfg, ctx, plan, teachers, merged):
    from mergedistill.cache import OfflineTargets, OnlineTargets, cache_fingerprint

    if cfg.cache.mode == "online":
        return OnlineTargets(
            teachers, merged.id_maps, cfg.cache.top_k, cfg.cache.batch_size, merged.glued_maps, merged.spaced_maps
        )
    # the fingerprint of what THIS plan needs, not the one the cache recorded for itself
    expected = cache_fingerprint(plan, teachers, vocab_fingerprint(ctx.inputs["vocab"]), cfg.cache.top_k)
    return OfflineTargets(ctx.inputs["cache"] / "topk", expected)


def _train_stage(ctx: StageContext, with_teachers: bool):
    import torch

    from mergedistill.plan import make_plan
    from mergedistill.student import configured_student
    from mergedistill.train import train, unpartitioned_student

    cfg = ctx.cfg
    plan, teachers, merged = ctx.ranks.main_first(
        "data", lambda: make_plan(cfg, ctx.inputs["vocab"], ctx.inputs["select"], ctx.inputs.get("split"), log=ctx.log)
    )
    student = configured_student(cfg, merged, teachers)
    targets = _targets(cfg, ctx, plan, teachers, merged) if with_teachers else None
    internals = None
    if with_teachers and (cfg.train.alpha_hidden > 0 or cfg.train.alpha_attn > 0):
        from mergedistill.internals import TeacherInternals

        internals = TeacherInternals(
            teachers,
            student.config,
            cfg.train.alpha_hidden > 0,
            cfg.train.alpha_attn > 0,
            ctx.log,
            configured_stride=cfg.student.layer_stride,
        )
    train_cfg = cfg.train if with_teachers else dataclasses.replace(cfg.train, alpha_hidden=0.0, alpha_attn=0.0)
    torch.manual_seed(cfg.seed)
    result = train(
        student,
        train_cfg,
        plan.batch,
        targets,
        ctx.work,
        resume=True,
        log=ctx.log,
        internals_fn=internals,
        device=cfg.device,
    )
    if not ctx.ranks.main:  # every rank trained on its own micro-batches; rank 0 writes the output
        return {}
    student = unpartitioned_student(student, result)
    student.save_pretrained(ctx.out / "model")
    for name in ("metrics.jsonl", "tensorboard"):
        if (ctx.work / name).exists():
            shutil.move(str(ctx.work / name), ctx.out / name)
    return {
        "final_loss": result.final_loss,
        "tokens_per_s": result.tokens_per_s,
        "train_seconds": result.seconds,
        "precision": result.precision,  # what train.precision resolved to; the export holds fp32 weights
        "student_params": sum(p.numel() for p in student.parameters()),
        "resumed_from_step": result.resumed_from,
    }


def stage_train(ctx):
    return _train_stage(ctx, with_teachers=True)


def stage_baseline(ctx):
    return _train_stage(ctx, with_teachers=False)


def stage_eval(ctx: StageContext):
    from transformers import AutoModelForMaskedLM

    from mergedistill.device import resolve_device
    from mergedistill.heldout_eval import compare_student, latency_ms
    from mergedistill.selection import primary_teacher

    cfg = ctx.cfg
    assignment = read_json(ctx.inputs["select"] / "assignment.json")["assignment"]
    from mergedistill.vocab import load_vocab
    from mergedistill.vocab.build import add_missing_spaced_maps

    merged = load_vocab(ctx.inputs["vocab"])
    teachers = load_teachers(cfg, {n for names in assignment.values() for n in names})
    device = resolve_device(cfg.device)
    student = AutoModelForMaskedLM.from_pretrained(ctx.inputs["train"] / "model").to(device).eval()
    baseline = None
    if "baseline" in ctx.inputs and (ctx.inputs["baseline"] / "model").exists():
        baseline = AutoModelForMaskedLM.from_pretrained(ctx.inputs["baseline"] / "model").to(device).eval()
    unified = unified_tokenizer(ctx.inputs["vocab"]) if cfg.data.tokenization == "unified" else None
    if unified is not None:
        add_missing_spaced_maps(merged, teachers)
    rows = []
    served = read_json(ctx.inputs["cache"] / "plan.json").get("served_by_language", {})
    scores = read_scores(ctx.inputs["select"])
    for lang in sorted(assignment):
        names = assignment[lang]  # min-ce/weighted: the teacher that served most of the language (or scored best)
        name = primary_teacher(
            names,
            served.get(lang),
            {n: scores[(lang, n)] for n in names if (lang, n) in scores},
            cfg.select.fertility_penalty,
            cfg.select.unk_penalty,
        )
        ctx.log(f"[eval] {lang}: student vs {name}")
        texts = eval_texts(cfg, lang, cfg.eval.paragraphs, split="test")

        def scored(model, name=name, texts=texts):  # the student or the baseline, same positions and paragraphs
            return compare_student(
                model,
                teachers[name],
                merged.id_maps[name],
                texts,
                cfg.cache.top_k,
                pll_paragraphs=cfg.eval.pll_paragraphs,
                student_tokenizer=unified,
                glued_map=merged.glued_maps.get(name),
                spaced_map=merged.spaced_maps.get(name),
            )

        row = {"lang": lang, "teacher": name, **scored(student)}
        if baseline is not None:
            scores = scored(baseline)
            row.update({f"baseline_{key}": scores[f"student_{key}"] for key in ("acc", "mlm_ce", "pll_per_char")})
        rows.append(row)
    all_cards = {c.name: c for c in load_cards(cfg)}
    teacher_params = {n: t.num_parameters() for n, t in load_teachers(cfg).items() if n in all_cards}
    student_params = sum(p.numel() for p in student.parameters())
    sizes = {
        "student_params": student_params,
        "teacher_params": teacher_params,
        "summed_teacher_params": sum(teacher_params.values()),
        "student / summed teachers": student_params / sum(teacher_params.values()),
    }
    length = min([128, student.config.max_position_embeddings - 2] + [t.card.max_length for t in teachers.values()])
    for batch_size in cfg.eval.speed_batch_sizes:
        s_ms = latency_ms(student, len(merged), batch_size, length)
        t_ms = {n: latency_ms(t.model, len(t.tokenizer), batch_size, length) for n, t in teachers.items()}
        sizes[f"student latency ms (batch {batch_size}, {length} tokens)"] = s_ms
        sizes[f"speed-up vs mean selected teacher (batch {batch_size})"] = (sum(t_ms.values()) / len(t_ms)) / s_ms
        sizes[f"speed-up vs running all selected teachers (batch {batch_size})"] = sum(t_ms.values()) / s_ms
    io.write_json_atomic(ctx.out / "eval.json", {"rows": rows, "sizes": sizes})
    return {"languages": len(rows)}


def stage_export(ctx: StageContext):
    from transformers import AutoModelForMaskedLM, pipeline

    from mergedistill.device import resolve_device
    from mergedistill.export import (
        exported_ids_check,
        model_card,
        pipeline_fill_mask_examples,
        route_through_evaluated_teachers,
        routed_fill_mask_examples,
        write_routed_guard,
    )
    from mergedistill.vocab.tokenize import copy_tokenizer_files

    cfg = ctx.cfg
    assignment = read_json(ctx.inputs["select"] / "assignment.json")["assignment"]
    eval_data = read_json(ctx.inputs["eval"] / "eval.json")
    model = AutoModelForMaskedLM.from_pretrained(ctx.inputs["train"] / "model")
    model.save_pretrained(ctx.out)
    if cfg.data.tokenization == "unified":  # the top-level tokenizer is the one the student was trained on
        copy_tokenizer_files(ctx.inputs["vocab"] / "unified", ctx.out)
    else:  # no one tokenizer segments as in training: AutoTokenizer refuses, naming load_routed_tokenizer
        write_routed_guard(ctx.out)
        ctx.log(
            f"[export] routed student: AutoTokenizer refuses {ctx.out} (no one tokenizer segments as in training); "
            "load its routed/ tokenizers with mergedistill.vocab.load_routed_tokenizer(PATH) and pass the language"
        )
    shutil.copytree(ctx.inputs["vocab"] / "routed", ctx.out / "routed")
    route_through_evaluated_teachers(ctx.out / "routed", {row["lang"]: row["teacher"] for row in eval_data["rows"]})
    io.write_text_atomic(ctx.out / "README.md", model_card(cfg, eval_data, assignment))
    examples = {}
    per_language = cfg.export.fill_mask_examples
    if cfg.data.tokenization == "routed" or (ctx.out / "tokenizer.json").exists():
        texts = {}
        for lang in sorted(assignment):  # held-out test paragraphs
            texts[lang] = eval_texts(cfg, lang, 40, split="test")
        if cfg.data.tokenization == "routed":  # through the tokenizers the student was trained on
            model.to(resolve_device(cfg.device)).eval()
            examples = routed_fill_mask_examples(model, ctx.out, ctx.inputs["vocab"], texts, per_language)
        else:
            fill = pipeline(
                "fill-mask", model=str(ctx.out), tokenizer=str(ctx.out), device=resolve_device(cfg.device)
            )  # it moves its inputs there
            examples = pipeline_fill_mask_examples(fill, model.config.max_position_embeddings, texts, per_language)
    if cfg.data.tokenization == "unified":  # what users load gives the ids the student was trained and scored on
        eval_sets = {lang: eval_texts(cfg, lang, cfg.eval.paragraphs, split="test") for lang in sorted(assignment)}
        check = exported_ids_check(ctx.out, unified_tokenizer(ctx.inputs["vocab"]), eval_sets)
        io.write_json_atomic(ctx.out / "tokenizer_check.json", check)
        ctx.log(
            "[export] AutoTokenizer ids equal to training: "
            + ", ".join(f"{k} {v['ids_equal']}/{v['paragraphs']}" for k, v in check.items())
        )
    io.write_json_atomic(ctx.out / "fill_mask_examples.json", examples)
    return {"files": sorted(p.name for p in ctx.out.iterdir())}


def stage_report(ctx: StageContext, commands: Sequence[str] = ()):
    """``commands``: the command lines that reproduce the run, listed at the end of the report."""
    from mergedistill.device import resolve_device
    from mergedistill.run_report import ReportFacts, dropped_note, write_report

    cfg = ctx.cfg
    eval_data = read_json(ctx.inputs["eval"] / "eval.json")
    shutil.copy(ctx.inputs["select"] / "selection_heatmap.png", ctx.out / "selection_heatmap.png")
    seconds = {}
    for name, path in ctx.inputs.items():
        manifest = io.read_manifest(path) or {}
        seconds[name] = manifest.get("seconds", 0.0)
    plan = read_json(ctx.inputs["cache"] / "plan.json")
    selection = (ctx.inputs["select"] / "selection.md").read_text(encoding="utf-8")
    selection += "\n\nExamples served per teacher over the training plan: " + ", ".join(
        f"{t}: {n}" for t, n in sorted(plan["served_examples"].items())
    )
    facts = ReportFacts(
        title=f"mergedistill report: {cfg.name}",
        commands=list(commands),
        config_yaml=to_yaml(cfg),
        eval_rows=eval_data["rows"],
        sizes=eval_data["sizes"],
        selection_markdown=selection,
        selection_heatmap="selection_heatmap.png",
        vocab_markdown=(ctx.inputs["vocab"] / "report.md").read_text(encoding="utf-8"),
        fill_mask=read_json(ctx.inputs["export"] / "fill_mask_examples.json"),
        metrics_jsonl=ctx.inputs["train"] / "metrics.jsonl",
        stage_seconds=seconds,
        notes=[
            f"cache: {json.dumps({k: v for k, v in (io.read_manifest(ctx.inputs['cache']) or {}).items() if k in ('mode', 'bytes', 'chunks')})}",
            dropped_note(io.read_manifest(ctx.inputs["cache"]) or {}),
            f"The student trained in {(io.read_manifest(ctx.inputs['train']) or {}).get('precision', cfg.train.precision)} "
            f"(train.precision: {cfg.train.precision}); the export holds its fp32 weights.",
            f"Speed-ups compare the student with the teachers it replaces on the same {'GPU' if resolve_device(cfg.device).type == 'cuda' else 'CPU'} "
            "input shape (median of 5 runs).",
        ],
    )
    check_file = ctx.inputs["export"] / "tokenizer_check.json"
    if check_file.exists():
        facts.notes.append(
            "The exported AutoTokenizer gives the ids the student was trained and scored on for "
            + ", ".join(f"{lang} {c['ids_equal']}/{c['paragraphs']}" for lang, c in read_json(check_file).items())
            + " held-out test paragraphs."
        )
    write_report(ctx.out, facts)
    return {}


def pipeline_stages(cfg, commands: Sequence[str] = ()) -> list[Stage]:
    """The stages of ``cfg``'s run; ``commands``: what reproduces it, for the report."""
    from mergedistill.selection import make_strategy

    stages = [
        Stage(
            "teachers",
            stage_teachers,
            sections=("teachers", "seed"),
            external=teacher_inputs,
            doc="build/load teachers",
        ),
        Stage(
            "select",
            stage_select,
            sections=("select", "corpus"),
            after=("teachers",),
            doc="score teachers per language and select",
        ),
        Stage(
            "vocab",
            stage_vocab,
            sections=("vocab", "corpus", "data.max_length"),
            after=("select",),
            doc="merge vocabularies",
        ),
    ]
    # the min-ce split (which teacher serves each training paragraph), measured once for cache, train and baseline
    split = ("split",) if make_strategy(cfg.select).splits_examples else ()
    if split:
        stages.append(
            Stage(
                "split",
                stage_split,
                sections=("corpus", "data.mask_seed", "data.mlm_probability"),
                after=("select",),
                doc="min-ce: which teacher serves each training paragraph",
            )
        )
    stages += [
        Stage(
            "cache",
            stage_cache,
            sections=("cache", "data", "corpus", "train.steps", "train.batch_size", "train.grad_accum", "seed"),
            after=("vocab", "select") + split,
            doc="teacher top-k cache",
            sharded=True,
        ),
        Stage(
            "train",
            stage_train,
            sections=("student", "train", "data", "cache.mode", "cache.top_k", "seed"),
            after=("cache", "vocab", "select") + split,
            doc="distil the student under DeepSpeed",
            sharded=True,
        ),
    ]
    if cfg.eval.baseline:
        stages.append(
            Stage(
                "baseline",
                stage_baseline,
                sections=("student", "train", "data", "seed"),
                after=("cache", "vocab", "select") + split,
                doc="the same student with gold MLM only (no teachers)",
                sharded=True,
            )
        )
    after_eval = ("train", "vocab", "select") + (("baseline",) if cfg.eval.baseline else ())
    stages += [
        Stage(
            "eval",
            stage_eval,
            sections=("eval", "corpus", "cache.top_k"),
            after=after_eval + ("cache",),
            doc="student vs teachers per language",
        ),
        Stage(
            "export",
            stage_export,
            sections=("export", "name"),
            after=("train", "vocab", "select", "eval"),
            doc="HF checkpoint + model card",
        ),
        Stage(
            "report",
            functools.partial(stage_report, commands=tuple(commands)),
            sections=("name",),
            after=("teachers", "select", "vocab", "cache", "train", "eval", "export"),
            doc="report",
        ),
    ]
    return stages


def say(message: str) -> None:
    """One line on stderr in one write, so that the lines of several ranks never run into each other."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run_experiment(cfg, config_path=None, overrides=(), only=None, force=(), until=None, command=None):
    """Run the pipeline; ``until`` stops after that stage (e.g. ``vocab build``). ``command``: the line the report
    gives to reproduce the run (default: ``mergedistill run CONFIG OVERRIDES``)."""
    if command is None:
        command = " ".join(["mergedistill run", str(config_path or ""), *overrides]).strip()
    stages = pipeline_stages(cfg, commands=[command])
    if until is not None:
        names = [s.name for s in stages]
        stages = stages[: names.index(until) + 1]
    results = run_stages(
        cfg,
        stages,
        cfg.output_dir,
        only=set(only) if only else None,
        force=set(force or ()),
        log=say,
    )
    out = Path(cfg.output_dir)
    if (out / "report" / "report.md").exists() and until is None and world_from_env()[0] == 0:
        print(f"report: {out / 'report' / 'report.md'} (and report.html); student: {out / 'export'}")
    return results
