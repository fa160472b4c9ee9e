"""The training stream and the plain fine-tuning loop that shares it with the environment."""

from __future__ import annotations

import torch
from test_env import digits_env

from finetune_gym.plain import PlainFineTuning


def test_an_epoch_covers_the_sample_once_and_the_stream_restores_exactly():
    env = digits_env(batch_size=32)
    stream = env.stream
    stream.new_epoch()
    seen = torch.cat(stream.batches)
    n = len(env.train_indices)
    assert len(stream.batches) == stream.steps_per_epoch == env.steps_per_epoch
    assert len(seen) == n - (1 if n % 32 == 1 else 0) and len(set(seen.tolist())) == len(seen)
    for _ in range(3):
        stream.advance()
    state = stream.get_state()

    def two_batches():
        first = stream.load()
        stream.advance()
        return [first, stream.load()]

    expected = two_batches()
    stream.set_state(state)
    for (x, y), (x2, y2) in zip(expected, two_batches(), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)  # same order and same augmentation
    # The end of an epoch starts the next, in a new order.
    first = list(stream.batches)
    while not stream.advance():
        pass
    assert stream.position == 0 and any(
        not torch.equal(a, b) for a, b in zip(first, stream.batches, strict=True)
    )


def test_a_fork_shares_the_cache_but_not_the_randomness():
    env = digits_env()
    fork = env.stream.fork(seed=0)
    assert fork.images is env.stream.images
    env.stream.seed(0)
    env.stream.new_epoch()
    fork.new_epoch()
    assert all(torch.equal(a, b) for a, b in zip(env.stream.batches, fork.batches, strict=True))
    fork.advance()  # moving one does not move the other
    assert env.stream.position == 0 and fork.position == 1


def test_plain_fine_tuning_learns_without_touching_the_environment():
    env = digits_env(epochs_per_episode=3)
    source = env.source_state_dict()
    target = env.fine_tuned_state_dict()
    plain = PlainFineTuning(env, lr=1e-3)
    env.model.load_state_dict(plain.model.state_dict())
    before = env.evaluate("val")
    for _ in range(3):
        plain.epoch()
    for key, value in env.source_state_dict().items():
        assert torch.equal(value, source[key]), key  # trains its own copy
    env.model.load_state_dict(plain.model.state_dict())
    after = env.evaluate("val")
    assert after > max(before, 0.6)
    env.model.load_state_dict(target)
    # One param group per layer of the environment, every trainable parameter in exactly one.
    groups = plain.optimizer.param_groups
    assert [g["name"] for g in groups] == env.layer_names and all(g["lr"] == 1e-3 for g in groups)
    params = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params) == len(list(plain.model.parameters()))
    assert len(plain.data()[1]) == env.batch_size
