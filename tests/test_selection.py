import numpy as np
import pytest
import torch

from mergedistill.config import SelectConfig
from mergedistill.errors import UserError
from mergedistill.selection import (
    Candidates,
    StreamSpec,
    check_shared_tokenization,
    format_table,
    make_strategy,
    min_ce_choice,
    mix_log_probs,
    mixture_weights,
    plot_heatmap,
)

CANDIDATES = Candidates(("en", "de", "ja"), {"mbert": ["en", "de", "ja"], "de-roberta": ["de"], "ja-xlmr": ["ja"]})
SCORES = {
    ("en", "mbert"): {"acc": 0.40, "pll_per_char": -1.2, "fertility": 1.3},
    ("de", "mbert"): {"acc": 0.30, "pll_per_char": -1.5, "fertility": 1.8},
    ("de", "de-roberta"): {"acc": 0.45, "pll_per_char": -1.1, "fertility": 1.4},
    ("ja", "mbert"): {"acc": 0.25, "pll_per_char": -2.0, "fertility": 1.0},
    ("ja", "ja-xlmr"): {"acc": 0.50, "pll_per_char": -1.4, "fertility": 3.5},
}


def test_static_assignment_and_its_errors():
    cfg = SelectConfig(strategy="static", assignment={"en": "mbert", "de": ["de-roberta", "mbert"], "ja": "ja-xlmr"})
    assert make_strategy(cfg).assign(CANDIDATES) == {"en": ["mbert"], "de": ["de-roberta", "mbert"], "ja": ["ja-xlmr"]}
    with pytest.raises(UserError, match="no teacher for language 'ja'"):
        make_strategy(SelectConfig(assignment={"en": "mbert", "de": "mbert"})).assign(CANDIDATES)
    with pytest.raises(UserError, match="unknown teacher 'gpt'"):
        make_strategy(SelectConfig(assignment={"en": "gpt", "de": "mbert", "ja": "mbert"})).assign(CANDIDATES)


def test_score_picks_the_teacher_trained_on_the_language():
    assignment = make_strategy(SelectConfig(strategy="score")).assign(CANDIDATES, SCORES)
    assert assignment == {"en": ["mbert"], "de": ["de-roberta"], "ja": ["ja-xlmr"]}


def test_fertility_penalty_can_flip_the_choice_and_top_m_keeps_several():
    # ja-xlmr wins on PLL by 0.6 but splits words 3.5x vs 1.0: a penalty of 0.5/piece-per-word flips it.
    flipped = make_strategy(SelectConfig(strategy="score", fertility_penalty=0.5)).assign(CANDIDATES, SCORES)
    assert flipped["ja"] == ["mbert"] and flipped["de"] == ["de-roberta"]
    both = make_strategy(SelectConfig(strategy="score", top_m=2)).assign(CANDIDATES, SCORES)
    assert both["de"] == ["de-roberta", "mbert"] and both["en"] == ["mbert"]


def test_language_without_teacher_is_a_user_error():
    lonely = Candidates(("en", "ko"), {"mbert": ["en"]})
    with pytest.raises(UserError, match="'ko' has no teacher"):
        make_strategy(SelectConfig(strategy="score")).assign(lonely, {("en", "mbert"): SCORES[("en", "mbert")]})


def test_each_strategy_decides_the_streams_of_a_language():
    texts = ["p0", "p1", "p2", "p3"]
    names = ["mbert", "de-roberta"]
    for strategy in ("static", "score"):  # the first teacher reads everything, whatever else the language lists
        chosen = make_strategy(SelectConfig(strategy=strategy))
        assert not chosen.splits(names) and chosen.streams("de", names, texts) == [StreamSpec("de", "mbert", texts)]
        with pytest.raises(NotImplementedError):
            chosen.choose(np.zeros((4, 2)))
    min_ce = make_strategy(SelectConfig(strategy="min-ce"))
    assert min_ce.splits(names) and not min_ce.splits(["mbert"])
    choice = min_ce.choose(np.array([[1.0, 0.5], [0.2, 0.9], [np.nan, np.nan], [np.nan, 2.0]]))
    assert choice.tolist() == [1, 0, 0, 1]  # a paragraph no teacher could score goes to the first
    assert min_ce.streams("de", names, texts, choice) == [  # by teacher name, corpus order kept
        StreamSpec("de", "de-roberta", ["p0", "p3"]),
        StreamSpec("de", "mbert", ["p1", "p2"]),
    ]
    assert min_ce.streams("de", names, texts, np.array([1, 1, 1, 1])) == [StreamSpec("de", "de-roberta", texts)]
    assert min_ce.streams("en", ["mbert"], texts) == [StreamSpec("en", "mbert", texts)]
    with pytest.raises(ValueError, match="one teacher index per de paragraph"):
        min_ce.streams("de", names, texts)
    weighted = make_strategy(SelectConfig(strategy="weighted"))
    assert weighted.per_example and not weighted.splits(names)
    assert weighted.streams("de", names, texts) == [StreamSpec("de", "mbert", texts, mixture=("mbert", "de-roberta"))]
    assert weighted.streams("en", ["mbert"], texts) == [StreamSpec("en", "mbert", texts)]


def test_min_ce_picks_lowest_cross_entropy_per_example():
    ce = np.array([[1.0, 0.5], [0.2, 0.9], [np.nan, 3.0]])
    assert min_ce_choice(ce).tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        min_ce_choice(np.array([[np.nan, np.nan]]))
    strategy = make_strategy(SelectConfig(strategy="min-ce"))
    assert strategy.per_example and strategy.assign(CANDIDATES)["de"] == ["de-roberta", "mbert"]


def test_weighted_mixes_distributions_and_refuses_different_tokenizations():
    weights = mixture_weights(np.array([[0.0, 0.0], [0.0, 10.0]]))
    assert np.allclose(weights[0], [0.5, 0.5]) and weights[1, 0] > 0.99
    p1 = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    p2 = torch.log(torch.tensor([[0.1, 0.2, 0.7]]))
    mixed = mix_log_probs([p1, p2], torch.tensor([[0.5, 0.5]])).exp()
    assert torch.allclose(mixed, torch.tensor([[0.4, 0.2, 0.4]]))
    strategy = make_strategy(SelectConfig(strategy="weighted"))
    with pytest.raises(UserError, match="different tokenizations"):
        strategy.assign(CANDIDATES, tokenizations={"mbert": "wp", "de-roberta": "bpe", "ja-xlmr": "spm"})
    check_shared_tokenization({"de": ["a", "b"]}, {"a": "same", "b": "same"})  # same tokenizer: accepted


def test_report_table_and_heatmap(tmp_path):
    assignment = {"en": ["mbert"], "de": ["de-roberta"], "ja": ["ja-xlmr"]}
    table = format_table(SCORES, assignment, served={"mbert": 10, "de-roberta": 5})
    assert "| de | de-roberta | 0.450 | -1.100 | 1.40 | ✔ |" in table
    assert "| de | mbert | 0.300 | -1.500 | 1.80 |  |" in table
    assert "| de-roberta | 5 |" in table
    plot_heatmap(SCORES, assignment, tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_split_language_is_evaluated_through_the_teacher_that_served_most_of_it():
    from mergedistill.selection import primary_teacher

    names = ["alpha", "beta"]  # alphabetical: the first candidate is not the main one
    assert primary_teacher(names, {"alpha": 40, "beta": 200}) == "beta"  # min-ce: served counts decide
    assert primary_teacher(names, {"alpha": 50, "beta": 50}) == "alpha"  # a tie: candidate order
    good, poor = {"acc": 0.5, "pll_per_char": -1.0}, {"acc": 0.6, "pll_per_char": -2.0}
    assert (
        primary_teacher(names, {"alpha+beta": 240}, {"alpha": poor, "beta": good}) == "beta"
    )  # weighted: one mixed stream, best score
    assert primary_teacher(names, None, {"alpha": good, "beta": good}) == "alpha"
    assert primary_teacher(["solo"]) == "solo"


def test_the_plan_counts_what_each_teacher_serves_per_language(teachers, texts, merged):
    from mergedistill.data import DataPlan, make_stream

    en = texts["en"]
    streams = [
        make_stream("en", teachers["bert"], en[:150], merged.id_maps["bert"], 64),
        make_stream("en", teachers["xlm-roberta"], en[150:], merged.id_maps["xlm-roberta"], 64),
        make_stream("de", teachers["roberta"], texts["de"], merged.id_maps["roberta"], 64),
    ]
    plan = DataPlan(streams, batch_size=4, n_batches=200, seed=0)
    served = plan.served_by_language()
    assert set(served) == {"en", "de"} and set(served["en"]) == {"bert", "xlm-roberta"}
    assert served["en"]["bert"] > served["en"]["xlm-roberta"]  # three times the paragraphs
    assert sum(n for counts in served.values() for n in counts.values()) == sum(plan.served().values()) == 200 * 4
