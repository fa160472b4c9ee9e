import copy
import math

import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS
from torch import nn

from finetune_gym import FineTuneEnv, default_config
from finetune_gym.rewards import REWARDS


def digits_env(**overrides) -> FineTuneEnv:
    config = {**default_config("FineTune-Digits-v0"), **TINY_DIGITS, **overrides}
    config.pop("ema")
    return FineTuneEnv(**config)


@pytest.fixture(scope="module")
def env():
    return digits_env()


def run_episode(env, action_fn):
    obs, _ = env.reset(seed=0)
    infos, rewards, terminated = [], [], False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action_fn())
        assert not truncated
        infos.append(info)
        rewards.append(reward)
    return obs, rewards, infos


def test_spaces_and_observation_layout(env):
    assert env.action_space.nvec.tolist() == [20] * env.n_layers
    assert env.n_layers == len(env.layer_names) == 5
    assert env.observation_space.shape == (env.n_layers * 4,)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    assert np.all(np.isfinite(obs))
    assert {"loss", "batch_accuracy", "epoch", "step"} <= info.keys()


def test_observation_is_the_pooled_mean_activation(env):
    """Block i of the observation equals the probe output averaged over batch, space and channel bins."""
    captured = {}
    probe = env.layers[1].probe
    handle = probe.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.detach()))
    try:
        obs, _ = env.reset(seed=0)
    finally:
        handle.remove()
    per_channel = captured["out"].mean(dim=(0, 2, 3))
    expected = per_channel.view(4, -1).mean(dim=1).numpy()  # 16 channels into 4 equal bins
    np.testing.assert_allclose(obs[4:8], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_means_is_the_mean_over_batch_and_space_in_every_layout(dtype, channels_last):
    """The CPU path for bf16 and channels-last activations reduces in two steps: same mean, in fp32."""
    from finetune_gym.observation import channel_means

    x = torch.randn(8, 16, 7, 5, generator=torch.Generator().manual_seed(0)).relu().to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    means = channel_means(x)
    assert means.dtype == torch.float32 and means.shape == (16,)
    expected = x.double().mean(dim=(0, 2, 3)).float()
    torch.testing.assert_close(means, expected, rtol=1e-5, atol=1e-6)  # fp32 accuracy, not bf16's
    flat = torch.randn(8, 10, dtype=dtype)  # a head's logits: no spatial dimensions
    torch.testing.assert_close(channel_means(flat), flat.double().mean(0).float(), rtol=1e-5, atol=1e-6)


def test_observation_size_does_not_depend_on_the_dataset(tmp_path):
    a = digits_env()
    b = digits_env(dataset_kwargs={"digit_classes": (0, 1, 2)})
    assert a.observation_space.shape == b.observation_space.shape


def test_episode_length_rewards_and_info(env):
    env2 = digits_env(epochs_per_episode=2)
    _, rewards, infos = run_episode(env2, lambda: np.full(env2.n_layers, 3))
    assert len(rewards) == env2.episode_steps == 2 * env2.steps_per_epoch
    assert all(0.0 <= r <= 1.0 for r in rewards)
    epoch_ends = [i for i, info in enumerate(infos) if "epoch_train_accuracy" in info]
    assert epoch_ends == [env2.steps_per_epoch - 1, 2 * env2.steps_per_epoch - 1]
    assert [info["step"] for info in infos] == list(range(len(infos)))
    assert infos[0]["learning_rates"] == pytest.approx([3 * 0.01 / 19] * env2.n_layers)
    assert "val_accuracy" in infos[-1] and 0.0 <= infos[-1]["val_accuracy"] <= 1.0
    with pytest.raises(RuntimeError, match="call reset"):
        env2.step(env2.action_space.sample())


def test_fine_tuning_learns(env):
    """A sensible constant learning rate lifts validation accuracy above the untrained head's."""
    env.reset(seed=0)
    before = env.evaluate("val")
    env3 = digits_env(epochs_per_episode=3)
    _, _, infos = run_episode(env3, lambda: np.full(env3.n_layers, 4))
    assert infos[-1]["val_accuracy"] > max(before, 0.6)
    assert env3.evaluate("test") > 0.6


def test_batch_reward_is_updated_model_accuracy_on_that_batch(env):
    env.reset(seed=0)
    inputs, labels = (t.clone() for t in env.pending_batch)
    # The update moves the parameters only; the step then forwards the next batch in train mode,
    # which moves the BatchNorm statistics. The reward was read between the two: use the ones it saw.
    buffers = {name: b.clone() for name, b in env.model.named_buffers()}
    _, reward, *_ = env.step(np.full(env.n_layers, 5))
    env.model.eval()
    with torch.no_grad():
        logits = torch.func.functional_call(env.model, buffers, (inputs,))
        expected = (logits.argmax(1) == labels).float().mean().item()
    env.model.train()
    assert reward == pytest.approx(expected)


def test_next_batch_reward_reads_the_next_training_forward():
    env = digits_env(reward="next_batch")
    env.reset(seed=0)
    _, reward, _, _, _ = env.step(np.full(env.n_layers, 5))
    # The next step trains on that batch and reports the accuracy its training forward had.
    _, _, _, _, info = env.step(np.full(env.n_layers, 5))
    assert reward == info["batch_accuracy"]
    _, _, infos = run_episode(env, lambda: np.full(env.n_layers, 5))
    assert all(0.0 <= i["reward"] <= 1.0 for i in infos)


def test_the_reward_changes_nothing_the_model_learns():
    """The reward is only read: its extra forward (eval mode) leaves the run as it was, bit for bit.
    Meta-training relies on this to run without it (meta_train.UNREWARDED)."""
    actions = np.random.default_rng(0).integers(0, 20, size=(64, 5))
    runs = {}
    for reward in REWARDS:
        env = digits_env(reward=reward)
        observation, _, _ = run_episode(env, iter(actions).__next__)
        runs[reward] = (observation, env.fine_tuned_state_dict())
    first_obs, first = runs[REWARDS[0]]
    for observation, state in runs.values():
        assert np.array_equal(observation, first_obs)
        assert all(torch.equal(state[k], first[k]) for k in first)


@pytest.mark.parametrize("reward", REWARDS)
def test_each_reward_stays_in_its_declared_range_and_declares_its_cost(reward, monkeypatch):
    """A reward is one object: its values lie in its range, and only the one that declares the
    extra forward on the trained batch runs it (counted here)."""
    from finetune_gym import rewards

    calls = []
    real = rewards.batch_correct
    monkeypatch.setattr(rewards, "batch_correct", lambda *a: calls.append(1) or real(*a))
    env = digits_env(reward=reward)
    low, high = env.reward_spec.range
    _, rewards_seen, infos = run_episode(env, lambda: env.action_space.sample())
    assert all(low <= r <= high for r in rewards_seen), (reward, min(rewards_seen), max(rewards_seen))
    trained = sum(not info["skipped_update"] for info in infos)
    assert len(calls) == (trained if env.reward_spec.extra_forward else 0) and trained > 0
    assert env.reward_spec.extra_forward == (reward == "batch")


def test_reset_restores_the_source_exactly(env):
    source = env.source_state_dict()
    run_episode(env, lambda: np.full(env.n_layers, 10))
    moved = env.fine_tuned_state_dict()
    assert any(not torch.equal(moved[k], source[k]) for k in source)
    env.reset()
    restored = env.fine_tuned_state_dict()
    for name, _ in env.model.named_parameters():
        assert torch.equal(restored[name], source[name]), name
    # Buffers: exactly the source's after the one training forward that reset runs on batch 0.
    reference = copy.deepcopy(env.source_model).train()
    with torch.no_grad():
        reference(env.pending_batch[0])
    for name, buffer in reference.named_buffers():
        assert torch.equal(restored[name], buffer), name
    assert len(env.optimizer.state) == 0


def test_reset_with_seed_is_deterministic(env):
    a, _ = env.reset(seed=7)
    step_a = env.step(np.full(env.n_layers, 2))
    b, _ = env.reset(seed=7)
    step_b = env.step(np.full(env.n_layers, 2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(step_a[0], step_b[0])
    assert step_a[1] == step_b[1]


def test_gradients_are_ready_before_the_agent_acts_and_never_stale():
    """The pending batch is backpropagated with its forward (the agent's action is not needed for
    gradients); a reset mid-episode starts from clean gradients."""
    env = digits_env()
    env.reset(seed=5)
    grads = [p.grad.clone() for p in env.model.parameters()]
    inputs, labels = env.pending_batch
    model = copy.deepcopy(env.source_model).train().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    loss.backward()
    for ours, expected in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(ours, expected.grad, rtol=1e-5, atol=1e-7)
    for _ in range(3):
        env.step(np.full(env.n_layers, 4))
    env.reset(seed=5)
    for ours, fresh in zip(env.model.parameters(), grads, strict=True):
        assert torch.equal(ours.grad, fresh)


def test_bf16_autocast_and_channels_last_on_the_cpu():
    """The CUDA defaults (bf16 autocast, channels-last) run on the CPU too: weights stay fp32."""
    env = digits_env(precision="bf16", channels_last=True, epochs_per_episode=2)
    obs, rewards, infos = run_episode(env, lambda: np.full(env.n_layers, 4))
    assert env.amp_dtype == torch.bfloat16 and env.channels_last
    assert all(p.dtype == torch.float32 for p in env.model.parameters())
    conv = next(m for m in env.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.all(np.isfinite(obs)) and all(0.0 <= r <= 1.0 for r in rewards)
    assert all(math.isfinite(i["loss"]) for i in infos)
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5])  # it still learns


def test_zero_learning_rate_freezes_exactly_that_layer(env):
    env.reset(seed=0)
    before = {
        name: [p.detach().clone() for p in layer.parameters]
        for name, layer in zip(env.layer_names, env.layers, strict=True)
    }
    action = np.full(env.n_layers, 10)
    action[1] = 0  # learning rate 0 for layer1.0
    for _ in range(3):
        env.step(action)
    for name, layer in zip(env.layer_names, env.layers, strict=True):
        same = all(torch.equal(a, b) for a, b in zip(before[name], layer.parameters, strict=True))
        assert same == (name == env.layer_names[1]), name


def test_one_param_group_per_layer(env):
    env.reset(seed=0)
    assert len(env.optimizer.param_groups) == env.n_layers
    assert isinstance(env.optimizer, torch.optim.Adam)
    _, _, _, _, info = env.step(np.arange(env.n_layers))
    np.testing.assert_allclose([g["lr"] for g in env.optimizer.param_groups], info["learning_rates"])


class NaNSwitch(nn.Module):
    """Turns the logits into NaN while ``active``: a real non-finite loss, through the public API."""

    def __init__(self):
        super().__init__()
        self.active = False

    def forward(self, x):
        return x * float("nan") if self.active else x


def test_non_finite_loss_skips_the_update():
    switch = NaNSwitch()
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(8, 5),
        switch,
    )
    env = digits_env(model=model, weights=None, epochs_per_episode=3)
    switch = env.model[-1]  # the environment trains a copy of the module it was given
    env.reset(seed=0)
    env.step(np.full(env.n_layers, 5))  # build Adam state
    switch.active = True
    _, _, _, _, info = env.step(np.full(env.n_layers, 5))  # trains on a finite loss, forwards NaN
    assert not info["skipped_update"]
    params = [p.detach().clone() for p in env.model.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in env.optimizer.state.items()}
    switch.active = False
    obs, reward, _, _, info = env.step(np.full(env.n_layers, 19))
    assert info["skipped_update"] and reward == 0.0 and math.isnan(info["loss"])
    assert np.all(np.isfinite(obs))
    assert all(torch.equal(a, b) for a, b in zip(params, env.model.parameters(), strict=True))
    for key, value in env.optimizer.state.items():
        for name, tensor in value.items():
            assert torch.equal(tensor, state[key][name])
    _, _, _, _, info = env.step(np.full(env.n_layers, 5))
    assert not info["skipped_update"] and math.isfinite(info["loss"])


class NaNGradient(nn.Module):
    """Passes its input on unchanged but, while ``active``, backpropagates NaN: a finite loss with
    non-finite gradients (what an overflow at a large learning rate gives)."""

    def __init__(self):
        super().__init__()
        self.active = False

    def forward(self, x):
        if self.active and x.requires_grad:
            x.register_hook(lambda grad: grad * float("nan"))
        return x


@pytest.mark.parametrize("optimizer", ["adam", "ldog"])
def test_non_finite_gradients_of_a_finite_loss_skip_the_update(optimizer):
    """At clothing10 15% a PBT member on L-DoG at head x7 got NaN gradients from a finite loss; DoG
    stopped the member with an assertion and the synchronous population waited for it forever."""
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        NaNGradient(),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(8, 5),
    )
    env = digits_env(model=model, weights=None, epochs_per_episode=3, optimizer=optimizer)
    gate = env.model[3]
    env.reset(seed=0)
    env.step(np.full(env.n_layers, 5))
    gate.active = True
    _, _, _, _, info = env.step(np.full(env.n_layers, 5))  # trains; the next batch's gradients are NaN
    assert not info["skipped_update"]
    params = [p.detach().clone() for p in env.model.parameters()]
    gate.active = False
    _, reward, _, _, info = env.step(np.full(env.n_layers, 5))
    assert info["skipped_update"] and math.isfinite(info["loss"]) and reward == 0.0
    assert all(torch.equal(a, b) for a, b in zip(params, env.model.parameters(), strict=True))
    _, _, _, _, info = env.step(np.full(env.n_layers, 5))
    assert not info["skipped_update"]
    assert all(torch.isfinite(p).all() for p in env.model.parameters())


def test_evaluate_and_state_dict(env):
    env.reset(seed=0)
    assert 0.0 <= env.evaluate("test") <= 1.0
    with pytest.raises(ValueError, match="'val' or 'test'"):
        env.evaluate("train")
    state = env.fine_tuned_state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    state["conv1.weight"].add_(1.0)
    assert not torch.equal(state["conv1.weight"], env.model.conv1.weight), "must be a copy"
    no_val = digits_env(val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction > 0"):
        no_val.evaluate("val")


def test_log_scale_and_other_granularity():
    env = digits_env(lr_scale="log", granularity="stage", n_lr_steps=10)
    assert env.action_space.nvec.tolist() == [10] * env.n_layers
    assert env.action_to_learning_rates(np.zeros(env.n_layers, dtype=int)).tolist() == [0.0] * env.n_layers


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"dataset": "imagenet"}, ValueError, "unknown dataset"),
        ({"sampling_rate": 0.0}, ValueError, "sampling_rate"),
        ({"sampling_rate": 1.2}, ValueError, "sampling_rate"),
        ({"reward": "loss"}, ValueError, "unknown reward"),
        ({"lr_scale": "exp"}, ValueError, "lr_scale"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"precision": "fp8"}, ValueError, "precision"),
        ({"augment": "mixup"}, ValueError, "augment"),
        ({"obs_features": 0}, ValueError, "obs_features"),
        ({"model": "resnet18", "weights": None}, ValueError, "3-channel images but dataset 'digits' has 1"),
        ({"weights": "imagenet"}, ValueError, "unknown weights 'imagenet'"),
    ],
)
def test_bad_inputs(overrides, error, message):
    with pytest.raises(error, match=message):
        digits_env(**overrides)


def test_invalid_action_raises(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(env.n_layers + 1, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 19\]"):
        env.step(np.full(env.n_layers, 20))


def test_step_after_close_says_to_reset_and_reset_reopens():
    """step() after close() failed on a bare AssertionError."""
    env = digits_env()
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match=r"closed.*reset\(\)"):
        env.step(np.zeros(env.n_layers, dtype=int))
    env.reset(seed=0)
    assert env.step(np.zeros(env.n_layers, dtype=int))[1] >= 0.0


def test_state_round_trip_continues_the_episode_exactly():
    """A second env restored from get_state() mid-episode ends with bit-identical weights."""
    env = digits_env(epochs_per_episode=2)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 20, env.n_layers) for _ in range(env.episode_steps)]
    for a in actions[:4]:
        env.step(a)
    state = env.get_state()
    twin = digits_env(epochs_per_episode=2)
    twin.set_state(state)
    for a in actions[4:]:
        out_a = env.step(a)
        out_b = twin.step(a)
        np.testing.assert_array_equal(out_a[0], out_b[0])
        assert out_a[1] == out_b[1] and out_a[2] == out_b[2]
    final_a, final_b = env.fine_tuned_state_dict(), twin.fine_tuned_state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    with pytest.raises(ValueError, match="other layers"):
        digits_env(granularity="stage").set_state(state)
