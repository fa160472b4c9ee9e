import numpy as np
import pytest

from finetune_gym.actions import LearningRateMap, learning_rate_steps


def test_linear_steps_match_the_paper_formula():
    rates = learning_rate_steps(20, 0.0, 0.01, "linear")
    assert rates.shape == (20,)
    for k in range(20):
        assert rates[k] == pytest.approx(0.0 + k * (0.01 - 0.0) / 19)


def test_log_steps_start_at_zero_then_span_three_decades():
    rates = learning_rate_steps(20, 0.0, 0.01, "log")
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(1e-5)
    assert rates[-1] == pytest.approx(0.01)
    ratios = rates[2:] / rates[1:-1]
    assert np.allclose(ratios, ratios[0])


def test_action_maps_each_layer_independently():
    lr_map = LearningRateMap(n_layers=4, n_steps=20, lr_min=0.0, lr_max=0.01)
    lrs = lr_map(np.array([0, 19, 5, 10]))
    np.testing.assert_allclose(lrs, [0.0, 0.01, 5 * 0.01 / 19, 10 * 0.01 / 19])
    assert lr_map.index_of(0.01) == 19


@pytest.mark.parametrize(
    "action, message",
    [
        (np.array([0, 1, 2]), "shape"),
        (np.array([0, 1, 2, 20]), r"\[0, 19\]"),
        (np.array([0, -1, 2, 3]), r"\[0, 19\]"),
        (np.array([0.5, 1, 2, 3]), "integer"),
        (np.array(["a", "b", "c", "d"]), "integer"),
    ],
)
def test_invalid_actions_raise_value_error(action, message):
    with pytest.raises(ValueError, match=message):
        LearningRateMap(n_layers=4)(action)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_steps": 1}, "at least 2"),
        ({"lr_min": 0.02, "lr_max": 0.01}, "lr_min < lr_max"),
        ({"scale": "cubic"}, "lr_scale"),
    ],
)
def test_bad_action_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearningRateMap(n_layers=2, **kwargs)


def test_explicit_rate_list():
    lr_map = LearningRateMap(n_layers=3, rates=[0.0, 3e-4])
    assert lr_map.space.nvec.tolist() == [2, 2, 2]
    np.testing.assert_array_equal(lr_map(np.array([1, 0, 1])), [3e-4, 0.0, 3e-4])
    for bad in ([0.1], [0.2, 0.1], [-1.0, 0.1]):
        with pytest.raises(ValueError, match="lr_steps"):
            LearningRateMap(n_layers=3, rates=bad)
