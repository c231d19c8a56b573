import numpy as np
import pytest

from medclassify.evaluation.selective import referral_curve, selective_from_metrics, selective_summary, sentence


def _probs(confidence, pred, k=2):
    """Rows whose top probability is `confidence`, on class `pred`."""
    p = np.zeros((len(confidence), k))
    for i, (c, j) in enumerate(zip(confidence, pred)):
        p[i] = (1 - c) / (k - 1)
        p[i, j] = c
    return p


def test_least_confident_images_are_referred_first():
    conf = [0.9, 0.55, 0.8, 0.7, 0.6]
    pred = [1, 0, 1, 0, 1]
    labels = np.array([1, 1, 1, 1, 1])  # correct: yes, no, yes, no, yes
    sel = selective_summary(_probs(conf, pred), labels, abstain_below=0.6)
    curve = sel["curves"]["confidence"]
    assert curve["coverage"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # kept in the order 0.9, 0.8, 0.7, 0.6, 0.55: right, right, wrong, right, wrong
    assert curve["accuracy"] == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5], abs=1e-4)
    assert curve["accuracy"][-1] == sel["accuracy_all"] == pytest.approx(0.6)  # coverage 1: the plain accuracy
    # the abstain threshold 0.6 refers only the 0.55 image (predict abstains under it, not at it)
    assert sel["operating_point"] == {"coverage": 0.8, "accuracy": 0.75, "kept": 4, "referred": 1,
                                      "referred_by": {"low_confidence": 1}}


def test_referral_order_is_monotone_and_ties_keep_their_order():
    rng = np.random.default_rng(0)
    risk = rng.integers(0, 5, 300).astype(float)
    correct = rng.uniform(size=300) < 0.7
    curve = referral_curve(risk, correct, max_points=1000)
    order = np.argsort(risk, kind="stable")
    for k, (cov, acc) in enumerate(zip(curve["coverage"], curve["accuracy"]), start=1):
        assert cov == pytest.approx(k / 300, abs=1e-5)
        assert acc == pytest.approx(correct[order[:k]].mean(), abs=1e-5)  # the kept set only grows
    assert len(referral_curve(risk, correct)["coverage"]) <= 200


def test_ood_scores_give_a_second_curve_and_refer_at_the_operating_point():
    labels = np.array([0, 0, 1, 1])
    probs = _probs([0.9, 0.9, 0.9, 0.9], [0, 1, 1, 1])  # the second image is wrong
    metrics = {"classes": ["a", "b"], "predictions": {"probabilities": probs.tolist(), "labels": labels.tolist(),
                                                      "ood_scores": [0.1, 5.0, 0.2, 0.3],
                                                      "in_distribution": [True, False, True, True]}}
    sel = selective_from_metrics(metrics, 0.6)
    assert sel["curves"]["ood"]["accuracy"] == pytest.approx([1, 1, 1, 0.75])  # the most OOD (wrong) image goes first
    assert sel["operating_point"]["referred_by"] == {"low_confidence": 0, "out_of_distribution": 1}
    assert sel["operating_point"]["accuracy"] == 1.0 and sel["operating_point"]["coverage"] == 0.75
    assert "unlike the training images" in sentence(sel)


def test_a_binary_threshold_decides_as_predict_does():
    probs = np.array([[0.6, 0.4], [0.8, 0.2]])
    labels = np.array([1, 0])
    op = {"threshold": 0.35, "positive_class": "b"}
    sel = selective_summary(probs, labels, 0.6, operating_point=op, classes=["a", "b"])
    # the threshold calls the first image b (right; argmax would say a), the second a (right)
    assert sel["accuracy_all"] == 1.0 and sel["decision"] == "threshold"
    # confidence is the probability of the class answered: 0.4 is under the abstain threshold
    assert sel["operating_point"]["referred"] == 1 and sel["operating_point"]["accuracy"] == 1.0
