import numpy as np
import pytest

from finetune_gym.datasets import sample_per_class, split_validation


def _toy(n_classes=5, groups_per_class=8, per_group=3):
    labels, groups = [], []
    for c in range(n_classes):
        for g in range(groups_per_class):
            labels += [c] * per_group
            groups += [c * 100 + g] * per_group
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.5])
def test_sampling_is_stratified_and_keeps_whole_groups(rate):
    labels, groups = _toy()
    kept = sample_per_class(labels, groups, rate, np.random.default_rng(0))
    for c in range(5):
        n_kept = np.sum(labels[kept] == c)
        assert n_kept >= max(3, round(rate * 24))  # whole groups of 3, at least the target
        assert n_kept <= round(rate * 24) + 2
    for g in np.unique(groups[kept]):
        assert np.sum(groups[kept] == g) == np.sum(groups == g), "a group was split by sampling"


def test_sampling_keeps_at_least_one_image_per_class():
    labels = np.array([0] * 50 + [1] * 2 + [2])
    kept = sample_per_class(labels, None, 0.01, np.random.default_rng(0))
    assert set(labels[kept]) == {0, 1, 2}


def test_full_rate_keeps_everything():
    labels, groups = _toy()
    assert len(sample_per_class(labels, groups, 1.0, np.random.default_rng(0))) == len(labels)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_sampling_rate(rate):
    with pytest.raises(ValueError, match="sampling_rate must be in"):
        sample_per_class(np.zeros(4, dtype=int), None, rate, np.random.default_rng(0))


def test_validation_split_never_shares_a_group_and_keeps_every_class_in_train():
    labels, groups = _toy(groups_per_class=5)
    train, val = split_validation(np.arange(len(labels)), labels, groups, 0.2, np.random.default_rng(1))
    assert set(groups[train]).isdisjoint(groups[val])
    assert len(np.intersect1d(train, val)) == 0
    assert len(train) + len(val) == len(labels)
    assert set(labels[train]) == set(range(5))
    assert 0.05 < len(val) / len(labels) < 0.4


def test_validation_fraction_zero_and_bounds():
    labels, groups = _toy()
    train, val = split_validation(np.arange(len(labels)), labels, groups, 0.0, np.random.default_rng(0))
    assert len(val) == 0 and len(train) == len(labels)
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation(np.arange(4), labels[:4], None, 1.0, np.random.default_rng(0))
