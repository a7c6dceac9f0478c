import math

import pytest
import torch

from metanlp_cli.metrics import accuracy, task_scores
from metanlp_cli.stats import mean_confidence_interval


def test_accuracy_of_logits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75


def test_f1_is_binary_f1_of_the_positive_class():
    # tp = 2, fp = 1, fn = 1: precision 2/3, recall 2/3, F1 2/3; accuracy 3/5
    scores = task_scores(["f1", "accuracy"], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["combined"] == pytest.approx((2 / 3 + 3 / 5) / 2)


def test_mcc_by_hand_and_in_degenerate_cases():
    # tp=2 tn=1 fp=1 fn=1: (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6
    assert task_scores(["mcc"], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])["mcc"] == pytest.approx(1 / 6)
    assert task_scores(["mcc"], [1, 1, 1, 1], [1, 0, 1, 0])["mcc"] == 0.0  # constant prediction
    assert task_scores(["mcc"], [1, 0, 1, 0], [1, 1, 1, 1])["mcc"] == 0.0  # single-class labels


def test_pearson_and_spearman_by_hand_and_in_degenerate_cases():
    predictions, labels = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # mean-centred: p = [-1.5,-.5,.5,1.5], l = [-1.75,.25,-.75,2.25]; cov sum 5.5; |p|^2 5, |l|^2 8.75
    scores = task_scores(["pearson", "spearman"], predictions, labels)
    assert scores["pearson"] == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert scores["spearman"] == pytest.approx(0.8)  # rank differences 0,1,1,0: 1 - 6*2/(4*15)
    constant = task_scores(["pearson", "spearman"], [2.5] * 4, labels)
    assert constant == {"pearson": 0.0, "spearman": 0.0, "combined": 0.0}


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match=r"metrics \['bleu'\] are not known; allowed: accuracy, f1"):
        task_scores(["bleu"], [1], [1])


def test_confidence_interval_formula():
    result = mean_confidence_interval([0.5, 0.7, 0.6, 0.8])
    std = math.sqrt((0.15**2 + 0.05**2 + 0.05**2 + 0.15**2) / 3)
    assert result["mean"] == pytest.approx(0.65) and result["std"] == pytest.approx(std)
    assert result["ci95"] == pytest.approx(1.959963984540054 * std / 2)
    assert result["count"] == 4
    assert math.isnan(mean_confidence_interval([0.5])["ci95"])


def test_the_paired_difference_is_a_paired_t_test_and_seeds_use_student_t():
    from scipy import stats as scipy_stats

    from metanlp_cli.stats import format_score, paired_difference, seed_confidence_interval

    a, b = [0.61, 0.72, 0.55, 0.83, 0.7], [0.6, 0.65, 0.57, 0.74, 0.66]
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    difference = paired_difference(a, b)
    assert (difference["low"], difference["high"]) == pytest.approx((expected.low, expected.high))
    seeds = seed_confidence_interval([0.5, 0.7, 0.6])
    assert seeds["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert format_score({"mean": 0.725, "ci95": 0.012}) == "72.50 +/- 1.20"
    assert format_score({"mean": 0.075, "ci95": 0.049}, signed=True) == "+7.50 +/- 4.90"
    assert format_score({"mean": 0.5, "ci95": math.nan}) == "50.00"
    with pytest.raises(ValueError, match="same units"):
        paired_difference([1.0], [1.0, 2.0])
