"""One device rule: every tensor reaches a model through ``mergedistill.device.to_device`` with that model's device.

On a GPU machine a missed transfer fails with a device mismatch; on the CPU it would pass silently. So these
tests switch on ``TRACK_TRANSFERS`` (``to_device`` tags each tensor it returns with the device it moved it
to) and put forward pre-hooks on every student and teacher: each tensor a model (or its encoder) is called
with must carry the tag of that model's device. The loss terms are watched the same way: the teachers'
targets and hidden states must have been moved to the student's device. A path that feeds a model (or the
loss) a tensor that did not go through ``to_device`` with the right device fails here, on a CPU.
"""

import json

import pytest
import torch

from mergedistill import device as placement
from mergedistill.cache import OfflineTargets, OnlineTargets, build_cache, finalize_cache
from mergedistill.config import ExperimentConfig, from_dict
from mergedistill.data import DataPlan, make_stream
from mergedistill.device import device_of, resolve_device, to_device
from mergedistill.errors import UserError
from mergedistill.internals import TeacherInternals
from mergedistill.student import build_student
from tests.conftest import ASSIGNMENT
from tests.test_real_adapt import _card as adapt_card
from tests.test_real_adapt import tiny_encoders  # noqa: F401 (a fixture)
from tests.test_train import STUDENT, cfg


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_in(value)


class Placement:
    """Records every model call and every tensor that reached a model or a loss term without ``to_device``."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.wrong: list[str] = []
        self.handles = []

    def check(self, where: str, obj, device) -> None:
        for tensor in tensors_in(obj):
            tag = getattr(tensor, placement.TAG, None)
            if tag != str(device):
                self.wrong.append(f"{where}: a {tuple(tensor.shape)} tensor tagged {tag!r}, the model is on {device}")

    def guard(self, name: str, model) -> None:
        """Pre-hooks on the model and its encoder (``heads.masked_lm_logits`` calls the encoder directly)."""
        modules = {name: model}
        encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if isinstance(encoder, torch.nn.Module):
            modules[f"{name}.encoder"] = encoder
        for label, module in modules.items():

            def hook(module, args, kwargs, label=label):
                self.calls[label] = self.calls.get(label, 0) + 1
                self.check(label, (args, kwargs), device_of(module))

            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def called(self, *prefixes: str) -> None:
        for prefix in prefixes:
            assert any(label.startswith(prefix) for label in self.calls), f"{prefix} was never called: {self.calls}"
        assert not self.wrong, self.wrong[:5]

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def watch(monkeypatch):
    monkeypatch.setattr(placement, "TRACK_TRANSFERS", True)
    watcher = Placement()
    yield watcher
    watcher.close()


@pytest.fixture(scope="module")
def small_plan(teachers, texts, merged):
    streams = [
        make_stream(lang, teachers[t], texts[lang][:40], merged.id_maps[t], max_length=48)
        for lang, (t,) in sorted(ASSIGNMENT.items())
    ]
    return DataPlan(streams, batch_size=4, n_batches=3, seed=0)


def watch_loss_terms(monkeypatch, watch, student):
    """The teachers' side of each loss term must have been moved to the student's device."""
    import mergedistill.train as train_module

    kd, terms = train_module.mlm_and_kd, train_module.internal_terms

    def mlm_and_kd(logits, gold, kd_rows, topk_ids, topk_logits, *rest):
        watch.calls["kd"] = watch.calls.get("kd", 0) + 1
        watch.check("kd targets", (topk_ids, topk_logits), device_of(student))
        return kd(logits, gold, kd_rows, topk_ids, topk_logits, *rest)

    def internal_terms(student_out, teacher_out, attention_mask, *rest):
        watch.calls["internals"] = watch.calls.get("internals", 0) + 1
        watch.check(
            "teacher hidden states",
            (teacher_out.hidden_states, teacher_out.attentions, attention_mask),
            device_of(student),
        )
        return terms(student_out, teacher_out, attention_mask, *rest)

    monkeypatch.setattr(train_module, "mlm_and_kd", mlm_and_kd)
    monkeypatch.setattr(train_module, "internal_terms", internal_terms)


def test_train_with_online_targets_and_hidden_attention_terms_moves_everything_to_the_models(
    tmp_path, small_plan, merged, teachers, watch, monkeypatch
):
    from mergedistill.train import train

    student = build_student(STUDENT, len(merged), seed=0)
    internals = TeacherInternals(teachers, student.config, want_hidden=True, want_attn=True, log=lambda m: None)
    for name, teacher in teachers.items():
        watch.guard(name, teacher.model)
    watch.guard("student", student)
    watch_loss_terms(monkeypatch, watch, student)
    train(
        student,
        cfg(steps=2, alpha_hidden=1.0, alpha_attn=1.0),
        small_plan.batch,
        OnlineTargets(teachers, merged.id_maps, 4),
        tmp_path,
        progress=False,
        log=lambda m: None,
        internals_fn=internals,
    )
    watch.called("student.encoder", "kd", "internals")
    assert (
        sum(n for label, n in watch.calls.items() if label.split(".")[0] in teachers) >= 4
    )  # targets and internals per step


def test_cache_build_and_training_on_offline_targets_move_everything_to_the_models(
    tmp_path, small_plan, merged, teachers, watch, monkeypatch
):
    from mergedistill.train import train

    for name, teacher in teachers.items():
        watch.guard(name, teacher.model)
    build_cache(tmp_path / "topk", small_plan, teachers, merged.id_maps, 4, "fp", progress=False)
    finalize_cache(tmp_path / "topk", "fp", small_plan)
    watch.called(*{small_plan.batch(i)["teacher"] for i in range(small_plan.n_batches)})
    student = build_student(STUDENT, len(merged), seed=0)
    watch.guard("student", student)
    watch_loss_terms(monkeypatch, watch, student)
    train(
        student,
        cfg(steps=2),
        small_plan.batch,
        OfflineTargets(tmp_path / "topk", "fp"),
        tmp_path / "train",
        progress=False,
        log=lambda m: None,
    )
    watch.called("student.encoder", "kd")


def test_teacher_scoring_and_student_eval_move_everything_to_the_models(texts, merged, teachers, watch):
    from mergedistill.heldout_eval import compare_student, latency_ms, teacher_metrics

    teacher = teachers["bert"]
    student = build_student(STUDENT, len(merged), seed=0).eval()
    watch.guard("teacher", teacher.model)
    watch.guard("student", student)
    teacher_metrics(teacher, texts["en"][:4], pll_paragraphs=1)
    compare_student(student, teacher, merged.id_maps["bert"], texts["en"][:4], k=4, pll_paragraphs=1)
    latency_ms(student, len(merged), 2, 16, repeats=1)
    watch.called("teacher", "student")


def test_bistil_phase1_and_phase2_move_everything_to_the_models(tiny_teachers, corpus_texts, watch, monkeypatch):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    from mergedistill.bistil.layer_reduction import make_student
    from mergedistill.bistil.phase1 import pack_language, train_phase1
    from mergedistill.bistil.phase2 import distill_loss_fn
    from mergedistill.bistil.schema import Phase1Config
    from mergedistill.bistil.task_metrics import predict
    from mergedistill.bistil.tasks import collate

    tokenizer = AutoTokenizer.from_pretrained(tiny_teachers["bert"])
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teachers["bert"], attn_implementation="eager").eval()
    student = make_student(teacher, 2)
    watch.guard("teacher", teacher)
    watch.guard("student", student)
    import mergedistill.bistil.phase1 as phase1_module
    import mergedistill.bistil.phase2 as phase2_module

    loss = phase1_module.phase1_loss

    def phase1_loss(
        student_out, teacher_out, attention_mask, *rest, **kw
    ):  # the batch's mask meets the student's outputs
        watch.calls["phase1 loss"] = watch.calls.get("phase1 loss", 0) + 1
        watch.check("phase1 loss mask", attention_mask, student_out.hidden_states[0].device)
        return loss(student_out, teacher_out, attention_mask, *rest, **kw)

    monkeypatch.setattr(phase1_module, "phase1_loss", phase1_loss)
    monkeypatch.setattr(phase2_module, "phase1_loss", phase1_loss)
    seqs = {lang: pack_language(tokenizer, corpus_texts[lang]["train"][:20], 32) for lang in ("en", "de")}
    p1 = from_dict(Phase1Config, {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "alpha_kd": 1.0})
    train_phase1(teacher, student, tokenizer, seqs, seqs, p1, log=lambda m: None)
    watch.called("teacher.encoder", "student.encoder", "phase1 loss")

    classifier = AutoModelForSequenceClassification.from_pretrained(
        tiny_teachers["bert"], num_labels=3, attn_implementation="eager"
    )
    task_teacher = AutoModelForSequenceClassification.from_pretrained(
        tiny_teachers["bert"], num_labels=3, attn_implementation="eager"
    )
    watch.guard("classifier", classifier)
    watch.guard("task teacher", task_teacher)
    examples = [{"input_ids": list(s[:16]), "labels": i % 3} for i, s in enumerate(seqs["en"][:4])]
    batch = collate(examples, tokenizer.pad_token_id)
    loss = distill_loss_fn(task_teacher, 1, 2.0, 1.0, 0.0, 1.0, 1.0)(classifier, batch)
    loss.backward()
    predict(classifier, [batch])
    watch.called("classifier", "task teacher")


def test_a_tensor_that_skips_to_device_is_caught(teachers, watch):
    """The watcher itself: a direct call with a plain tensor is reported, the same call through to_device is not."""
    model = teachers["bert"].model
    watch.guard("teacher", model)
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert watch.wrong and "tagged None" in watch.wrong[0]
        watch.wrong.clear()
        model(**to_device({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, device_of(model)))
    assert not watch.wrong


def test_to_device_walks_batches_and_model_outputs():
    from transformers.modeling_outputs import BaseModelOutput

    out = to_device({"a": torch.ones(2), "b": (torch.zeros(1), "x"), "n": 3}, "cpu")
    assert torch.equal(out["a"], torch.ones(2)) and out["b"][1] == "x" and out["n"] == 3
    moved = to_device(
        BaseModelOutput(last_hidden_state=torch.ones(1, 2, 3), hidden_states=(torch.ones(1),)), torch.device("cpu")
    )
    assert isinstance(moved, BaseModelOutput) and moved.hidden_states[0].shape == (1,)


def test_device_rule_and_its_config_keys(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")  # auto = CUDA only when torch sees one
    with pytest.raises(UserError, match="device: cuda asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    base = {"teachers": {"cards": ["a.yaml"]}}
    assert (
        from_dict(ExperimentConfig, base).device == "auto" and from_dict(ExperimentConfig, base).teachers.device == ""
    )
    for key, value in (("device", "gpu"), ("teachers.device", "cuda:x")):
        with pytest.raises(UserError, match=f"config key '{key}' must be auto, cpu, cuda or cuda:N"):
            from_dict(ExperimentConfig, base, overrides=[f"{key}={value}"])
    from mergedistill.bistil.schema import BistilConfig

    with pytest.raises(UserError, match="config key 'device' must be auto"):
        from_dict(BistilConfig, {"device": "tpu"})


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    from mergedistill.device import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16")] == ["fp32", "bf16"]  # the others pass through
    with pytest.raises(UserError, match="config key 'train.precision' must be one of fp32, bf16, fp16, auto"):
        from_dict(ExperimentConfig, {"teachers": {"cards": ["a.yaml"]}}, overrides=["train.precision=bf8"])


def test_adapted_teacher_build_moves_every_input_to_the_model(tmp_path, tiny_encoders, watch, monkeypatch):
    """The adaptation recipe (``build.base``) trains on the run's device: held-out accuracy, the masked-LM
    steps and the drift measurement all feed the models through ``to_device``."""
    import transformers

    from mergedistill.zoo import build_teacher

    loaded = transformers.AutoModelForMaskedLM.from_pretrained

    def guarded(*args, **kwargs):
        model = loaded(*args, **kwargs)
        watch.guard(f"adapted{len(watch.handles)}", model)
        return model

    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", guarded)
    card = adapt_card(tmp_path, tiny_encoders["bert"], steps=4, head_steps=2)
    out = build_teacher(card, seed=0, progress=False, log=lambda m: None, device=resolve_device("cpu"))
    watch.called("adapted0", "adapted")
    assert json.loads((out / "adapt_report.json").read_text())["device"] == "cpu"
