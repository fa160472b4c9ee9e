"""Any pretrained network as the source: torchvision's families by name, a network of your own by
import path or as a module, a cut of your own (layers=), your own input statistics (mean/std)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_VIT, kill_after_first_checkpoint, limit, make_image_folder
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn
from torchvision import models as tvm

import evaluate
import train
from finetune_gym import FineTuneEnv
from finetune_gym.agents.config import RunConfig
from finetune_gym.agents.run import run_training
from finetune_gym.models import WeightsError, build_backbone

# Layer counts from each architecture's definition: stem, blocks or stages, last conv, head.
CUTS = [
    # MobileNetV2: 7 stages (its t,c,n,s table), 17 inverted-residual blocks; conv: 2 units in
    # the first block, 3 in the others.
    ("mobilenet_v2", "stage", 1 + 7 + 1 + 1),
    ("mobilenet_v2", "block", 1 + 17 + 1 + 1),
    ("mobilenet_v2", "conv", 1 + 2 + 16 * 3 + 1 + 1),
    # MobileNetV3-Small: 11 blocks of widths 16,24,24,40,40,40,48,48,96,96,96 (5 runs), a hidden
    # Linear before the head.
    ("mobilenet_v3_small", "stage", 1 + 5 + 1 + 2),
    ("mobilenet_v3_small", "block", 1 + 11 + 1 + 2),
    # EfficientNet-B0: 7 stages, 16 MBConv blocks.
    ("efficientnet_b0", "stage", 1 + 7 + 1 + 1),
    ("efficientnet_b0", "block", 1 + 16 + 1 + 1),
    # ConvNeXt-T: 4 stages (3,3,9,3 blocks), 3 downsampling layers.
    ("convnext_tiny", "stage", 1 + 4 + 1),
    ("convnext_tiny", "block", 1 + 18 + 3 + 1),
    # ViT-B/16: patch embedding, 12 encoder blocks, head.
    ("vit_b_16", "block", 1 + 12 + 1),
]


@pytest.mark.parametrize("model, granularity, n_layers", CUTS)
def test_family_cuts(model, granularity, n_layers):
    backbone = build_backbone(model, 7, weights=None, granularity=granularity, image_size=32)
    assert len(backbone.layers) == n_layers
    assigned = [id(p) for layer in backbone.layers for p in layer.parameters]
    assert len(assigned) == len(set(assigned)) == len(list(backbone.model.parameters()))
    assert backbone.layer_names[-1] == "head"
    out = backbone.model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)


@pytest.mark.parametrize(
    "model, granularity", [("convnext_tiny", "conv"), ("vit_b_16", "stage"), ("vit_b_16", "conv")]
)
def test_a_granularity_a_family_lacks_is_an_error(model, granularity):
    with pytest.raises(ValueError, match=rf"granularity='{granularity}' is not defined for {model}.*layers="):
        build_backbone(model, 7, weights=None, granularity=granularity, image_size=32)


@pytest.mark.parametrize("granularity", ["stage", "block", "conv"])
def test_a_resnet_built_elsewhere_gets_the_cut_of_one_built_by_name(granularity):
    """By import path or as a module, a ResNet is cut (and its head replaced) as by name."""
    from finetune_gym.models.cifar_resnet import cifar_resnet

    by_name = build_backbone("resnet18", 5, weights=None, granularity=granularity)
    by_path = build_backbone("torchvision.models:resnet18", 5, weights=None, granularity=granularity)
    assert by_path.layer_names == by_name.layer_names and by_path.layer_names[0] == "stem"
    assert by_path.model.fc.out_features == 5
    own = build_backbone(tvm.resnet34(), 5, weights=None, granularity=granularity)  # 1000 -> 5 classes
    assert own.layer_names == build_backbone("resnet34", 5, weights=None, granularity=granularity).layer_names
    assert own.model.fc.out_features == 5
    cifar = build_backbone(cifar_resnet(32), 3, weights=None, granularity=granularity)
    named = build_backbone("cifar_resnet32", 3, weights=None, granularity=granularity)
    assert cifar.layer_names == named.layer_names and cifar.model.linear.out_features == 3


def test_a_network_of_your_own_is_never_cut_silently_otherwise(image_folder):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="granularity='conv' is not defined for Sequential"):
        build_backbone(net, 3, weights=None, granularity="conv")


def _env(root, model, **kwargs):
    options = {"weights": None, "image_size": 32, "batch_size": 4, "epochs_per_episode": 1, "device": "cpu"}
    return FineTuneEnv(model=model, dataset="imagefolder", data_root=str(root), **{**options, **kwargs})


@pytest.mark.parametrize(
    "model, kwargs",
    [
        ("mobilenet_v2", {}),
        ("mobilenet_v3_small", {}),
        ("efficientnet_b0", {}),
        pytest.param("convnext_tiny", {}, marks=pytest.mark.slow),
        (TINY_VIT["model"], {"model_kwargs": TINY_VIT["model_kwargs"]}),
    ],
)
def test_env_checkers_pass_for_each_family(image_folder, model, kwargs):
    """Also the determinism check: dropout and stochastic depth repeat with the reset seed."""
    env = _env(image_folder, model, **kwargs)
    gym_check_env(env, skip_render_check=True, skip_close_check=True)
    sb3_check_env(env, warn=True, skip_render_check=True)


@pytest.mark.parametrize(
    "model, kwargs",
    [
        ("mobilenet_v3_small", {}),
        ("efficientnet_b0", {}),
        (TINY_VIT["model"], {"model_kwargs": TINY_VIT["model_kwargs"]}),
    ],
)
def test_the_residual_controller_runs_on_each_family(image_folder, model, kwargs):
    """The meta-trained controller reads per-layer features of any network the package cuts into
    layers: a multiplier per layer, the head's apart from the others', and the weights move."""
    from finetune_gym.agents import residual_controller as rc
    from finetune_gym.agents.registry import make_agent

    theta = np.zeros(len(rc.FEATURES))
    theta[rc.FEATURES.index("head")] = 1.0  # the head up an octave
    theta[rc.FEATURES.index("depth")] = -0.5  # deeper layers lower: the head ends at 2**0.5
    controller = rc.ResidualController(theta=theta.tolist())
    env = _env(image_folder, model, **kwargs, **controller.env_overrides())
    agent = make_agent("residual_controller", env, theta=theta.tolist())
    observation, _ = env.reset(seed=0)
    before = {k: v.clone() for k, v in env.model.state_dict().items()}
    for _ in range(3):
        action, _ = agent.predict(observation[None])
        assert action.shape == (1, env.n_layers)
        observation, _, terminated, _, info = env.step(action[0])
        assert np.all(np.isfinite(observation)) and not info["skipped_update"]
        if terminated:
            break
    rates = info["learning_rates"]
    assert rates[-1] == 2**0.5 * rates[0] > 0  # the head above the stem, every layer still learning
    assert len(set(np.round(rates, 12))) > 2  # depth spreads the layers between them
    after = env.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_vit_observes_channels_of_its_tokens(image_folder):
    env = _env(image_folder, TINY_VIT["model"], model_kwargs=TINY_VIT["model_kwargs"], obs_features=16)
    assert env.layer_names == [
        "conv_proj",
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
        "head",
    ]
    assert [layer.tokens for layer in env.layers] == [False, True, True, False]
    obs, _ = env.reset(seed=0)
    # An encoder block's 16 values are its 16 channels averaged over batch and tokens.
    inputs = env.stream.fork(0).load()[0]
    seen = {}
    hook = env.model.encoder.layers[0].register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    env.pooler.recording = True
    env.model.train()(inputs)
    env.pooler.recording = False
    hook.remove()
    assert seen["out"].shape[1:] == (17, 16)  # 4 x 4 patches + class token, 16 channels
    np.testing.assert_allclose(
        env.pooler._pooled[1].cpu().numpy(), seen["out"].mean(dim=(0, 1)).numpy(), rtol=1e-5, atol=1e-6
    )


def test_dropout_continues_exactly_after_a_restore(image_folder):
    """A network with dropout resumes bit-identically: each batch's noise seed is part of the state."""
    root = make_image_folder(image_folder.parent / "more", per_class=12)
    a = _env(root, "tiny_models:small_cnn", epochs_per_episode=3)
    b = _env(root, "tiny_models:small_cnn", epochs_per_episode=3)
    a.reset(seed=3)
    for _ in range(4):
        a.step(a.action_space.sample())
    b.set_state(a.get_state())
    action = np.full(a.n_layers, 12)
    for _ in range(5):
        oa, ra, *_ = a.step(action)
        ob, rb, *_ = b.step(action)
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb
    before = torch.random.get_rng_state()
    a.step(action)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's generator is untouched


def test_layers_override_any_cut(image_folder):
    backbone = build_backbone(
        "vit_b_16",
        3,
        weights=None,
        image_size=32,
        layers=["conv_proj+class_token+encoder.pos_embedding", "encoder.layers", "encoder.ln+heads"],
    )
    assert [layer.name for layer in backbone.layers][1] == "encoder.layers"
    assert [layer.tokens for layer in backbone.layers] == [False, True, False]
    with pytest.raises(
        ValueError, match=r"parameters not assigned to any layer: \['class_token'.*requires_grad=False"
    ):
        build_backbone("vit_b_16", 3, weights=None, image_size=32, layers=["conv_proj", "encoder", "heads"])
    with pytest.raises(ValueError, match=r"\['stem'\] name no module or parameter of MobileNetV2"):
        build_backbone("mobilenet_v2", 3, weights=None, layers=["stem", "features", "classifier"])
    with pytest.raises(ValueError, match="parameter shared by layers"):
        build_backbone("mobilenet_v2", 3, weights=None, layers=["features", "features.0", "classifier"])
    env = _env(image_folder, "mobilenet_v2", layers=["features", "classifier"])
    assert env.n_layers == 2 and env.action_space.nvec.tolist() == [20, 20]


def test_mean_and_std_reach_the_augmentation(image_folder):
    env = _env(image_folder, "mobilenet_v2", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert torch.equal(env.augmenter.mean.flatten(), torch.full((3,), 127.5))
    assert torch.equal(env.augmenter.std.flatten(), torch.full((3,), 127.5))
    out = env.augmenter.eval(env.stream.images[:4])
    assert out.min() >= -1.0 and out.max() <= 1.0  # [-1, 1]: what TFLite-converted MobileNets expect
    with pytest.raises(ValueError, match=r"one value per input channel of the model \(3\)"):
        _env(image_folder, "mobilenet_v2", mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="must be positive"):
        _env(image_folder, "mobilenet_v2", std=[0.5, 0.0, 0.5])


def test_torchvision_weights_by_enum_name_and_offline_error(monkeypatch):
    reference = tvm.vit_b_16(weights=None)  # 224 px: the pretrained position embedding's size
    fetched = []

    def cached(self, *args, **kwargs):
        fetched.append(self.name)
        return reference.state_dict()

    monkeypatch.setattr(tvm.ViT_B_16_Weights, "get_state_dict", cached)
    backbone = build_backbone("vit_b_16", 5, weights="IMAGENET1K_V1", image_size=32)
    assert fetched == ["IMAGENET1K_V1"]
    # The weights land, the position embedding interpolated to 32 px (2 x 2 patches + class token).
    assert torch.equal(backbone.model.conv_proj.weight, reference.conv_proj.weight)
    assert backbone.model.encoder.pos_embedding.shape == (1, 5, 768)
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.model.heads.head.out_features == 5
    build_backbone("vit_b_16", 5, weights="imagenet", image_size=32)
    assert fetched[-1] == tvm.ViT_B_16_Weights.DEFAULT.name
    with pytest.raises(
        WeightsError, match=r"unknown weights 'IMAGENET9K'.*MobileNet_V2_Weights \(IMAGENET1K_V1"
    ):
        build_backbone("mobilenet_v2", 5, weights="IMAGENET9K")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"pre-download .*mobilenet_v2-.*weights=None"):
        build_backbone("mobilenet_v2", 5, weights="imagenet")


def test_import_path_models_and_their_errors(image_folder):
    # A torchvision builder by import path is recognised as its family (cut, head)...
    backbone = build_backbone(
        "torchvision.models:mobilenet_v2", 4, weights=None, model_kwargs={"width_mult": 0.25}
    )
    assert len(backbone.layers) == 20 and backbone.model.classifier[1].out_features == 4
    # ... a network of your own gets num_classes and is cut one layer per child.
    env = _env(image_folder, "tiny_models:small_cnn", model_kwargs={"width": 4})
    assert env.layer_names == ["0", "1", "2"] and env.config["model"] == "tiny_models:small_cnn"
    for model, message in [
        ("no_such_package.nets:build", "cannot import 'no_such_package.nets'"),
        ("tiny_models:missing", "has no attribute 'missing'"),
        ("tiny_models:NOT_A_FACTORY", "names a int, not a function or class"),
        ("numpy:zeros", r"returned a ndarray, not a torch.nn.Module|numpy:zeros"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_backbone(
                model, 3, weights=None, model_kwargs={"shape": 3} if model == "numpy:zeros" else None
            )
    with pytest.raises(ValueError, match=r"model='mobilenet_v2' with model_kwargs=\{'depth': 3\}"):
        build_backbone("mobilenet_v2", 3, weights=None, model_kwargs={"depth": 3})
    with pytest.raises(ValueError, match="model_kwargs go to a factory"):
        build_backbone("resnet18", 3, weights=None, model_kwargs={"width": 2})
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'.*import path"):
        build_backbone("mobilenet_v9", 3, weights=None)


def test_a_module_object_is_copied_and_recorded_by_class(image_folder, tmp_path):
    from tiny_models import small_cnn

    net = small_cnn(3, width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    env = _env(image_folder, net)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample() * 0 + 19)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched
    assert env.config["model"]["module"] == "torch.nn.modules.container.Sequential"
    assert env.config["model"]["parameters"] == sum(p.numel() for p in net.parameters())
    config = RunConfig(
        env_id="FineTune-CIFARResNet-v0",
        algo="uniform",
        episodes=1,
        epochs_per_episode=1,
        ema=None,
        env_kwargs={
            "model": net,
            "weights": None,
            "dataset": "imagefolder",
            "data_root": str(image_folder),
            "dataset_kwargs": {},
            "image_size": 32,
            "batch_size": 4,
        },
    )
    run_dir = tmp_path / "run"
    run_training(config, run_dir, progress=False, verbose=False)
    saved = json.loads((run_dir / "config.json").read_text())["env_kwargs"]["model"]
    assert saved["module"].endswith("Sequential") and len(json.dumps(saved)) < 300
    from finetune_gym.agents.report import row_from_results

    row = row_from_results(json.loads((run_dir / "results.json").read_text()))
    assert row.model == "torch.nn.modules.container.Sequential"
    # Re-evaluating the folder cannot rebuild an object, and says what to do instead.
    with pytest.raises(ValueError, match=r"cannot rebuild: pass the module again.*import path"):
        FineTuneEnv(model=saved, dataset="imagefolder", data_root=str(image_folder))


DIGITS_OWN = [
    "--env-kwargs",
    "batch_size=64",
    "weights=None",
    "model=tiny_models:small_cnn",
    "model_kwargs={'in_channels': 1, 'width': 4}",
]


def test_import_path_model_trains_resumes_after_a_kill_and_reevaluates(tmp_path, capsys):
    """train.py with a model of your own by import path: killed, resumed bit-identically, and
    evaluate.py rebuilds it from the run folder."""
    args = [
        "--episodes",
        "2",
        "--epochs-per-episode",
        "2",
        "--sampling-rate",
        "0.5",
        "--no-progress",
        "--algo",
        "random",
        *DIGITS_OWN,
    ]
    whole = tmp_path / "whole"
    assert train.main([*args, "--run-dir", str(whole)]) == 0
    killed = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "train.py", *args, "--run-dir", str(killed)]
    assert kill_after_first_checkpoint(cmd, killed, env) == -signal.SIGKILL
    resumed = subprocess.run(
        [*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit(300)
    )
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(whole / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "final_model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((whole / "results.json").read_text())
    assert results["env_config"]["model"] == "tiny_models:small_cnn"
    capsys.readouterr()
    # The run's own model is code named in a file: evaluated only when asked for (issue 24).
    assert evaluate.main([str(whole)]) == 1 and "--trust-code" in capsys.readouterr().out
    assert evaluate.main([str(whole), "--trust-code"]) == 0  # rebuilt, recomputed, agrees
    assert f"{100 * results['final_test_accuracy']:.2f}" in capsys.readouterr().out


def test_schedule_free_evaluation_repeats_with_stochastic_depth(image_folder):
    """Schedule-Free recomputes BatchNorm statistics in train mode at every evaluation: with
    EfficientNet's stochastic depth that pass is seeded, so evaluating twice gives the same number."""
    env = _env(image_folder, "efficientnet_b0", optimizer="schedulefree_adamw", epochs_per_episode=2)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.full(env.n_layers, 10))
    first, second = env.fine_tuned_state_dict(), env.fine_tuned_state_dict()  # at the evaluation point
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert env.evaluate("test") == env.evaluate("test")
