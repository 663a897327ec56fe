"""Teacher selection: which teacher serves which language (or which example).

Strategies are small classes registered by name (``STRATEGIES``):

- ``static``   the config maps language -> teacher (or a list of teachers);
- ``score``    per language, rank candidate teachers by a tokenizer-independent score measured on held-out
               text (pseudo-log-likelihood per character, ties broken by masked-token accuracy), minus
               optional penalties for tokenizer fertility (pieces per word) and unknown-piece rate;
- ``min-ce``   per example (FuseLLM's MinCE): every candidate reads the example, the one with the lowest
               cross-entropy on the gold masked tokens per character serves it;
- ``weighted`` per example (AvgCE-style): candidates that share one tokenization are mixed position by
               position with weights softmax(-CE); refused when their tokenizations differ.

Every strategy returns an ``Assignment`` (language -> teachers) from ``assign`` and decides, in ``streams``,
which data streams a language's training text becomes: one stream through its first teacher (static, score),
one stream per teacher over the paragraphs each serves (min-ce, from a per-paragraph choice that the pipeline's
``split`` stage computes once and stores, see ``mergedistill.plan``), or one stream whose teachers are mixed
per example (weighted). The pure functions over a cross-entropy matrix (``min_ce_choice``,
``mixture_weights``) are what the split stage and the teacher targets call per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence

import numpy as np

from mergedistill.errors import UserError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

# (language, teacher) -> {"acc": float, "pll_per_char": float, "fertility": float, "unk_rate": float}
ScoreTable = Mapping[tuple[str, str], Mapping[str, float]]
Assignment = dict[str, list[str]]


@dataclass(frozen=True)
class StreamSpec:
    """One data stream a strategy asks for: ``texts`` of ``lang`` read through ``teacher``'s tokenizer;
    ``mixture``: the teachers (sharing that tokenization) whose distributions are mixed per example."""

    lang: str
    teacher: str
    texts: Sequence[str]
    mixture: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidates:
    """Which teachers may serve each language: a teacher is a candidate for the languages on its card."""

    languages: tuple[str, ...]
    teacher_languages: Mapping[str, Sequence[str]]  # teacher name -> languages it claims

    def for_language(self, lang: str, allowed: Sequence[str] = ()) -> list[str]:
        names = [t for t, langs in sorted(self.teacher_languages.items()) if lang in langs]
        if allowed:
            names = [t for t in names if t in allowed]
        if not names:
            raise UserError(
                f"language {lang!r} has no teacher among the cards (select.candidates); add a teacher card whose languages include it"
            )
        return names


def selection_score(metrics: Mapping[str, float], fertility_penalty: float = 0.0, unk_penalty: float = 0.0) -> float:
    """Higher is better: PLL per character minus penalties (fertility is pieces per word, unk_rate in [0, 1])."""
    return (
        float(metrics["pll_per_char"])
        - fertility_penalty * float(metrics.get("fertility", 0.0))
        - unk_penalty * float(metrics.get("unk_rate", 0.0))
    )


class Strategy:
    name: ClassVar[str]
    per_example: ClassVar[bool] = False  # teachers are chosen or mixed per example (recorded in assignment.json)
    splits_examples: ClassVar[bool] = False  # ``streams`` needs a stored per-paragraph choice (the split stage)
    needs_scores: ClassVar[bool] = False

    def __init__(self, select_cfg):
        self.cfg = select_cfg

    def assign(
        self,
        candidates: Candidates,
        scores: ScoreTable | None = None,
        tokenizations: Mapping[str, str] | None = None,
    ) -> Assignment:
        """language -> teachers. ``scores``: held-out metrics per (language, teacher); ``tokenizations``: teacher ->
        a fingerprint of its tokenizer (only ``weighted`` reads it)."""
        raise NotImplementedError

    def splits(self, names: Sequence[str]) -> bool:
        """Whether a language served by ``names`` is divided among them paragraph by paragraph."""
        return False

    def choose(self, ce_per_char: np.ndarray) -> np.ndarray:
        """Per paragraph (rows), the index of the teacher (columns) that serves it (strategies that split)."""
        raise NotImplementedError(f"select.strategy={self.name} does not split a language per paragraph")

    def streams(
        self, lang: str, names: Sequence[str], texts: Sequence[str], choice: np.ndarray | None = None
    ) -> list[StreamSpec]:
        """The streams ``lang``'s training ``texts`` become; ``choice``: per text, the index in ``names`` of the
        teacher serving it (given when ``splits(names)``). Here: the first teacher serves all of them."""
        return [StreamSpec(lang, names[0], texts)]


class Static(Strategy):
    name = "static"

    def assign(self, candidates, scores=None, tokenizations=None):
        assignment: Assignment = {}
        for lang in candidates.languages:
            chosen = self.cfg.assignment.get(lang)
            if chosen is None:
                raise UserError(f"select.assignment has no teacher for language {lang!r}; add `{lang}: <teacher name>`")
            names = [chosen] if isinstance(chosen, str) else list(chosen)
            for name in names:
                if name not in candidates.teacher_languages:
                    known = ", ".join(sorted(candidates.teacher_languages))
                    raise UserError(f"select.assignment.{lang}: unknown teacher {name!r}; known teachers: {known}")
            assignment[lang] = names
        extra = sorted(set(self.cfg.assignment) - set(candidates.languages))
        if extra:
            raise UserError(
                f"select.assignment.{extra[0]}: language not in corpus.languages; remove it or add the language"
            )
        return assignment


class ScoreBased(Strategy):
    name = "score"
    needs_scores = True

    def ranking(self, lang: str, candidates: Candidates, scores: ScoreTable) -> list[tuple[str, float]]:
        """Candidates for ``lang``, best first, with their selection scores."""
        ranked = []
        for teacher in candidates.for_language(lang, self.cfg.candidates):
            metrics = scores.get((lang, teacher))
            if metrics is None:
                raise UserError(
                    f"no held-out score for teacher {teacher!r} on {lang!r}; run `mergedistill select` again"
                )
            value = selection_score(metrics, self.cfg.fertility_penalty, self.cfg.unk_penalty)
            ranked.append((teacher, value, float(metrics.get("acc", 0.0))))
        ranked.sort(key=lambda item: (-item[1], -item[2], item[0]))  # deterministic tie-break by name
        return [(teacher, value) for teacher, value, _ in ranked]

    def assign(self, candidates, scores=None, tokenizations=None):
        if scores is None:
            raise ValueError("the score strategy needs a score table")
        return {
            lang: [t for t, _ in self.ranking(lang, candidates, scores)[: self.cfg.top_m]]
            for lang in candidates.languages
        }


def subset(texts, indices: np.ndarray):
    """``texts`` at ``indices`` (in order): a list, or a ``datasets`` dataset's memory-mapped selection."""
    if hasattr(texts, "select"):
        return texts.select(indices)
    return [texts[int(i)] for i in indices]


def min_ce_choice(ce_per_char: np.ndarray) -> np.ndarray:
    """Per example (rows), the index of the teacher (columns) with the lowest CE; NaN (cannot read) never wins."""
    ce = np.where(np.isnan(ce_per_char), np.inf, ce_per_char)
    if np.isinf(ce).all(axis=1).any():
        raise ValueError("an example has no teacher that can score it")
    return ce.argmin(axis=1)


def mixture_weights(ce_per_char: np.ndarray) -> np.ndarray:
    """AvgCE-style weights per example: softmax(-CE) over teachers (rows sum to 1)."""
    logits = -np.asarray(ce_per_char, dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def mix_log_probs(log_probs: Sequence["torch.Tensor"], weights: "torch.Tensor") -> "torch.Tensor":
    """Mix teachers' distributions at the same positions: log Σ_t w[n,t] p_t[n,:] (all [n, V], same vocabulary)."""
    import torch

    stacked = torch.stack(list(log_probs), dim=1)  # [n, t, V]
    return torch.logsumexp(stacked + torch.log(weights).unsqueeze(-1), dim=1)


class MinCE(ScoreBased):
    """Per example; candidates per language as for ``score`` (all of them, not just the top one)."""

    name = "min-ce"
    per_example = True
    splits_examples = True
    needs_scores = False

    def assign(self, candidates, scores=None, tokenizations=None):
        return {lang: candidates.for_language(lang, self.cfg.candidates) for lang in candidates.languages}

    def splits(self, names):
        return len(names) > 1

    def choose(self, ce_per_char):
        """The lowest CE per character wins; a paragraph no teacher could score goes to the first."""
        ce = np.asarray(ce_per_char, dtype=np.float64)
        return min_ce_choice(np.where(np.isnan(ce).all(axis=1, keepdims=True), 0.0, ce))

    def streams(self, lang, names, texts, choice=None):
        """One stream per teacher over the paragraphs it serves (corpus order kept), by teacher name."""
        if not self.splits(names):
            return super().streams(lang, names, texts)
        if choice is None or len(choice) != len(texts):
            raise ValueError(f"min-ce needs one teacher index per {lang} paragraph ({len(texts)})")
        choice = np.asarray(choice)
        parts = {name: subset(texts, np.flatnonzero(choice == j)) for j, name in enumerate(names)}
        return [StreamSpec(lang, name, part) for name, part in sorted(parts.items()) if len(part)]


class Weighted(MinCE):
    name = "weighted"
    splits_examples = False

    def assign(self, candidates, scores=None, tokenizations=None):
        assignment = super().assign(candidates, scores)
        if tokenizations is not None:  # refused unless each language's candidates share one tokenization
            check_shared_tokenization(assignment, tokenizations)
        return assignment

    def splits(self, names):
        return False

    def streams(self, lang, names, texts, choice=None):
        """One stream over all of the language's text, its teachers mixed per example (one teacher: plain)."""
        if len(names) == 1:
            return super().streams(lang, names, texts)
        return [StreamSpec(lang, names[0], texts, mixture=tuple(names))]


def check_shared_tokenization(assignment: Assignment, tokenizations: Mapping[str, str]) -> None:
    """``weighted`` mixes distributions position by position: every language's teachers must tokenize alike.

    ``tokenizations`` maps teacher name -> a fingerprint of its tokenizer (vocabulary + algorithm).
    """
    for lang, teachers in sorted(assignment.items()):
        kinds = {tokenizations[t] for t in teachers}
        if len(kinds) > 1:
            raise UserError(
                f"select.strategy=weighted: teachers {', '.join(teachers)} for {lang!r} use different tokenizations, "
                "so their distributions cannot be mixed position by position; use min-ce or restrict select.candidates"
            )


def primary_teacher(
    names: Sequence[str],
    served: Mapping[str, int] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    fertility_penalty: float = 0.0,
    unk_penalty: float = 0.0,
) -> str:
    """The teacher a language is evaluated and exported through: of its ``names``, the one that served most of its
    training examples (``served``: teacher -> examples; min-ce splits), else (one mixed stream, ``weighted``) the one
    with the best held-out selection score (``scores``: teacher -> metrics; ties: accuracy, then name), else the first."""
    counts = {n: served[n] for n in names if served and n in served}
    if counts:
        return max(names, key=lambda n: (counts.get(n, -1), -list(names).index(n)))
    rated = [n for n in names if scores and n in scores]
    if rated:
        return min(
            rated,
            key=lambda n: (
                -selection_score(scores[n], fertility_penalty, unk_penalty),
                -float(scores[n].get("acc", 0.0)),
                n,
            ),
        )
    return names[0]


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Static, ScoreBased, MinCE, Weighted)}


def make_strategy(select_cfg) -> Strategy:
    try:
        return STRATEGIES[select_cfg.strategy](select_cfg)
    except KeyError:
        raise UserError(
            f"select.strategy: unknown strategy {select_cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


def format_table(scores: ScoreTable, assignment: Assignment, served: Mapping[str, int] | None = None) -> str:
    """A Markdown table: one row per (language, teacher) with its metrics; chosen rows marked."""
    lines = ["| language | teacher | masked acc | PLL/char | fertility | chosen |", "|---|---|---:|---:|---:|:---:|"]
    for lang, teacher in sorted(scores):
        m = scores[(lang, teacher)]
        chosen = "✔" if teacher in assignment.get(lang, []) else ""
        lines.append(
            f"| {lang} | {teacher} | {m.get('acc', float('nan')):.3f} | {m.get('pll_per_char', float('nan')):.3f} "
            f"| {m.get('fertility', float('nan')):.2f} | {chosen} |"
        )
    if served:
        lines += ["", "| teacher | examples served |", "|---|---:|"]
        lines += [f"| {t} | {n} |" for t, n in sorted(served.items())]
    return "\n".join(lines)


def plot_heatmap(scores: ScoreTable, assignment: Assignment, path, metric: str = "pll_per_char") -> None:
    """A PNG heat-map of ``metric`` per (language, teacher); chosen cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted({lang for lang, _ in scores})
    teachers = sorted({t for _, t in scores})
    grid = np.full((len(langs), len(teachers)), np.nan)
    for (lang, teacher), metrics in scores.items():
        grid[langs.index(lang), teachers.index(teacher)] = metrics[metric]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(teachers), 1.0 + 0.45 * len(langs)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(teachers)), teachers, rotation=20, ha="right")
    ax.set_yticks(range(len(langs)), langs)
    for i, lang in enumerate(langs):
        for j, teacher in enumerate(teachers):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white", fontsize=8)
            if teacher in assignment.get(lang, []):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"teacher selection ({metric}; red = chosen)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
