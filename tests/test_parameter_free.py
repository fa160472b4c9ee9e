"""The per-layer parameter-free bases (issue 25): Prodigy per layer and averaged L-DoG, checked
against their update rules on small problems, then inside the environment."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from prodigyopt import Prodigy
from test_env import digits_env
from torch import nn

from finetune_gym.optimizers import PARAMETER_FREE, layer_optimizer
from finetune_gym.parameter_free import AveragedLDoG, prodigy_per_layer


def two_independent_layers(seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(4, 3), nn.Linear(6, 2)


def loss(a: nn.Linear, b: nn.Linear | None, step: int) -> torch.Tensor:
    """Separate least-squares problems per layer: a layer's gradient never depends on the other."""
    g = torch.Generator().manual_seed(step)
    xa, ya = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
    xb, yb = torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)
    total = ((a(xa) - ya) ** 2).mean()
    if b is not None:
        total = total + 100.0 * ((b(xb) - yb) ** 2).mean()  # a hundred times the gradient scale
    return total


def test_prodigy_layerwise_gives_each_layer_its_own_estimate():
    a, b = two_independent_layers()
    alone = copy.deepcopy(a)
    per_layer = prodigy_per_layer(
        [{"params": list(a.parameters()), "lr": 1.0}, {"params": list(b.parameters()), "lr": 1.0}]
    )
    single = Prodigy([{"params": list(alone.parameters()), "lr": 1.0}])
    joint_a, joint_b = two_independent_layers()
    joint = Prodigy(
        [{"params": list(joint_a.parameters()), "lr": 1.0}, {"params": list(joint_b.parameters()), "lr": 1.0}]
    )
    for step in range(20):
        for optimizer, (x, y) in ((per_layer, (a, b)), (single, (alone, None)), (joint, (joint_a, joint_b))):
            optimizer.zero_grad()
            loss(x, y, step).backward()
            optimizer.step()
    # Layer a moves exactly as a Prodigy that sees a alone; in one Prodigy for both it does not.
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), alone.parameters(), strict=True))
    assert not torch.equal(a.weight, joint_a.weight)
    d = [group["d"] for group in per_layer.param_groups]
    assert d[0] != d[1] and joint.param_groups[0]["d"] == joint.param_groups[1]["d"]


def test_ldog_follows_the_papers_rule_and_averages_polynomially():
    """L-DoG (Ivgi et al. 2023, eq. 1 per tensor): eta_t = lr * rbar_t / sqrt(G_t), rbar_t = max(r_eps,
    max_{i<=t} ||x_i - x_0||), r_eps = reps_rel (1 + ||x_0||), G_t = sum_{i<=t} ||g_i||^2 + eps; the
    average x̄_t = x̄_{t-1} + (gamma + 1) / (t + gamma) (x_t - x̄_{t-1})."""
    a, b = two_independent_layers(1)
    reference = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
    lrs = [1.0, 1.0, 0.5, 0.5]  # layer a at its default, layer b at half
    optimizer = AveragedLDoG(
        [{"params": list(a.parameters()), "lr": 1.0}, {"params": list(b.parameters()), "lr": 0.5}],
        reps_rel=1e-4,
    )
    x0 = [x.clone() for x in reference]
    rbar = [1e-4 * (1 + x.norm()) for x in x0]
    G = [torch.tensor(1e-8) for _ in x0]
    average, gamma = None, 8.0
    for step in range(12):
        optimizer.zero_grad()
        loss(a, b, step).backward()
        grads = [p.grad.detach().clone() for p in [*a.parameters(), *b.parameters()]]
        optimizer.step()
        for i, (x, g) in enumerate(zip(reference, grads, strict=True)):
            rbar[i] = torch.maximum(rbar[i], (x - x0[i]).norm())
            G[i] = G[i] + (g**2).sum()
            reference[i] = x - lrs[i] * rbar[i] / G[i].sqrt() * g
        weight = (gamma + 1) / (step + 1 + gamma)
        average = (
            [x.clone() for x in reference]
            if average is None
            else [m + weight * (x - m) for m, x in zip(average, reference, strict=True)]
        )
        for x, p in zip(reference, [*a.parameters(), *b.parameters()], strict=True):
            torch.testing.assert_close(p.detach(), x, rtol=1e-5, atol=1e-7)
    training = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
    optimizer.eval()
    for m, p in zip(average, [*a.parameters(), *b.parameters()], strict=True):
        torch.testing.assert_close(p.detach(), m, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="train"):
        optimizer.step()
    optimizer.train()
    assert all(torch.equal(p, t) for p, t in zip([*a.parameters(), *b.parameters()], training, strict=True))


def test_ldog_state_resumes_exactly_and_on_the_parameters_device():
    a, b = two_independent_layers(2)

    def groups(x, y):
        return [{"params": list(x.parameters()), "lr": 1.0}, {"params": list(y.parameters()), "lr": 1.0}]

    first = layer_optimizer(
        "ldog", [("a", list(a.parameters())), ("b", list(b.parameters()))], torch.device("cpu")
    )
    for step in range(3):
        for group in first.param_groups:
            group["lr"] = 1.0
        first.zero_grad()
        loss(a, b, step).backward()
        first.step()
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    second = AveragedLDoG(groups(a2, b2), reps_rel=1e-4)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for group in second.param_groups:
        assert all(
            v.device == group["params"][0].device for v in group.values() if isinstance(v, torch.Tensor)
        )
    for step in range(3, 6):
        for optimizer, (x, y) in ((first, (a, b)), (second, (a2, b2))):
            optimizer.zero_grad()
            loss(x, y, step).backward()
            optimizer.step()
    assert all(
        torch.equal(p, q)
        for p, q in zip([*a.parameters(), *b.parameters()], [*a2.parameters(), *b2.parameters()], strict=True)
    )


@pytest.mark.parametrize("optimizer", PARAMETER_FREE)
def test_a_parameter_free_base_takes_per_layer_multipliers(optimizer):
    """Unlike the plain prodigy base, each layer may have its own multiplier of its own estimate."""
    env = digits_env(optimizer=optimizer, lr_steps=[0.0, 0.5, 1.0, 2.0], epochs_per_episode=1)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0, 1, 2, 3, 2]))
    assert info["learning_rates"].tolist() == [0.0, 0.5, 1.0, 2.0, 1.0]


@pytest.mark.parametrize("optimizer", ["ldog", "prodigy_layerwise", "mechanic_adamw", "adam"])
def test_residual_actions_of_one_reproduce_the_base_run_bit_for_bit(optimizer):
    """lr_scale="residual": {0, 1/4, 1/2, 1, 2, 4} x the base's own step; all 1 is the base run."""
    base_lr = 1e-3 if optimizer == "adam" else 1.0
    residual = digits_env(
        optimizer=optimizer, lr_scale="residual", base_lr=base_lr, n_lr_steps=6, epochs_per_episode=1
    )
    assert residual.lr_map.rates.tolist() == [0.0, *(base_lr * np.array([0.25, 0.5, 1.0, 2.0, 4.0]))]
    plain = digits_env(optimizer=optimizer, lr_steps=[0.0, base_lr], epochs_per_episode=1)
    for env in (residual, plain):
        env.reset(seed=4)
    for _ in range(residual.episode_steps):
        a = residual.step(np.full(5, 3))
        b = plain.step(np.full(5, 1))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    for key, value in residual.model.state_dict().items():
        assert torch.equal(value, plain.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="even n_lr_steps of at least 4"):
        digits_env(lr_scale="residual", base_lr=1.0, n_lr_steps=5)
    with pytest.raises(ValueError, match="needs base_lr > 0"):
        digits_env(lr_scale="residual", n_lr_steps=6)


def test_mechanic_follows_the_papers_rule_over_adamw():
    """Algorithm 1 of Cutkosky, Defazio & Mehta (2023), written out here in float64 with AdamW's
    update by hand, against MechanicAdamW on a small least-squares problem."""
    from finetune_gym.parameter_free import MechanicAdamW

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=generator), torch.randn(6, generator=generator)
    x0 = torch.randn(3, generator=generator)

    def gradient(x: np.ndarray) -> np.ndarray:
        an, bn = a.double().numpy(), b.double().numpy()
        return an.T @ (an @ x - bn) / len(bn)

    # The reference: Algorithm 1, Delta read back from x (as the authors' package does).
    betas = np.array(MechanicAdamW.BETAS)
    lam, s_init, eps, lr, wd, (b1, b2), adam_eps = 0.01, 1e-8, 1e-8, 1.0, 0.01, (0.9, 0.999), 1e-8
    x, ref = x0.double().numpy().copy(), x0.double().numpy().copy()
    s, v, r, m = np.zeros(6), np.zeros(6), np.zeros(6), np.full(6, 1e-6)
    mom, sq = np.zeros(3), np.zeros(3)
    expected = []
    for t in range(1, 31):
        g = gradient(x)
        delta = (x - ref) / (s.sum() + eps)
        h = delta @ (g + lam * s.sum() * np.linalg.norm(g) / (np.linalg.norm(x) + eps) * x)
        mom, sq = b1 * mom + (1 - b1) * g, b2 * sq + (1 - b2) * g * g
        step = (mom / (1 - b1**t)) / (np.sqrt(sq / (1 - b2**t)) + adam_eps)
        u = -lr * wd * x - lr * step
        m = np.maximum(betas * m, abs(h))
        v = betas**2 * v + h * h
        r = np.maximum(betas * r - s * h, 0.0)
        s = (s_init / 6 * m + r) / (np.sqrt(v) + eps)
        x = ref + max(s.sum(), 0.0) * (delta + u)
        expected.append(x.copy())

    param = nn.Parameter(x0.clone().double())
    optimizer = MechanicAdamW([param])
    for t in range(30):
        optimizer.zero_grad()
        (0.5 * (a.double() @ param - b.double()).square().mean()).backward()
        optimizer.step()
        np.testing.assert_allclose(param.detach().numpy(), expected[t], rtol=1e-5, atol=1e-6)  # tuner in fp32
    assert float(optimizer.scale) > 1e-4  # it has learned a scale far above its start
