import shutil
import urllib.error

import pytest
import torch
from conftest import CIFAR_CHECKPOINT, needs_shared
from torch import nn

from finetune_gym.models import WeightsError, build_backbone
from finetune_gym.models.weights import read_state_dict


@pytest.mark.parametrize("granularity, n_layers", [("stage", 6), ("block", 18), ("conv", 54)])
def test_resnet50_layer_cuts(granularity, n_layers):
    backbone = build_backbone("resnet50", 7, weights=None, granularity=granularity)
    assert len(backbone.layers) == n_layers
    assert backbone.layer_names[0] == "stem" and backbone.layer_names[-1] == "head"
    assigned = [id(p) for layer in backbone.layers for p in layer.parameters]
    assert len(assigned) == len(set(assigned)) == len(list(backbone.model.parameters()))
    assert backbone.model.fc.out_features == 7


def test_block_cut_of_resnet50_names_the_16_bottlenecks():
    names = build_backbone("resnet50", 3, weights=None).layer_names
    assert names[1:-1] == [
        f"layer{s}.{b}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True) for b in range(n)
    ]


def test_new_head_is_seeded():
    a = build_backbone("cifar_resnet20", 43, weights=None, seed=3).model.linear.weight
    b = build_backbone("cifar_resnet20", 43, weights=None, seed=3).model.linear.weight
    c = build_backbone("cifar_resnet20", 43, weights=None, seed=4).model.linear.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


@needs_shared(CIFAR_CHECKPOINT)
def test_cifar_resnet20_checkpoint_lands_unchanged():
    state = read_state_dict(CIFAR_CHECKPOINT)
    backbone = build_backbone("cifar_resnet20", 43, weights=CIFAR_CHECKPOINT)
    loaded = backbone.model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith("linear.")}
    assert len(body) == 95
    for key, tensor in body.items():
        assert torch.equal(loaded[key], tensor), key
    assert backbone.model.linear.out_features == 43


@needs_shared(CIFAR_CHECKPOINT)
def test_mismatched_checkpoint_names_the_keys():
    with pytest.raises(WeightsError, match=r"missing keys: layer1\.3\..*Check that the file"):
        build_backbone("cifar_resnet32", 10, weights=CIFAR_CHECKPOINT)
    with pytest.raises(WeightsError, match=r"unexpected keys"):
        build_backbone("resnet18", 10, weights=CIFAR_CHECKPOINT)


@needs_shared(CIFAR_CHECKPOINT)
def test_named_cifar_weights_come_from_the_hub_cache(package_cache):
    checkpoints = package_cache / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copy(CIFAR_CHECKPOINT, checkpoints / CIFAR_CHECKPOINT.name)
    backbone = build_backbone("cifar_resnet20", 43, weights="cifar10")
    assert torch.equal(backbone.model.conv1.weight, read_state_dict(CIFAR_CHECKPOINT)["conv1.weight"])


def test_imagenet_weights_offline_give_an_actionable_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"pre-download .*resnet50-0676ba61\.pth.*weights=None"):
        build_backbone("resnet50", 100, weights="imagenet")


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", 10, weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        build_backbone("resnet18", 10, weights=junk)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        build_backbone("resnet18", 10, weights=listing)
    with pytest.raises(WeightsError, match="unknown weights 'imagenet21k'"):
        build_backbone("resnet18", 10, weights="imagenet21k")


def test_unknown_model_and_granularity():
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        build_backbone("vgg16", 10, weights=None)
    with pytest.raises(ValueError, match="unknown granularity"):
        build_backbone("resnet18", 10, weights=None, granularity="neuron")


def test_user_module_is_cut_by_children_and_head_checked():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    backbone = build_backbone(model, 5, weights=None)
    assert backbone.layer_names == ["0", "4"]
    with pytest.raises(ValueError, match="has 5 outputs but the dataset has 3 classes"):
        build_backbone(model, 3, weights=None)


def test_digits_source_is_pretrained_and_cached(package_cache):
    first = build_backbone("digits_resnet8", 5, weights="digits")
    cached = list((package_cache / "finetune_gym" / "weights").glob("digits_resnet8_source-*.pt"))
    assert len(cached) == 1
    payload = torch.load(cached[0], weights_only=True)
    assert payload["test_accuracy"] > 0.9  # really trained on digits 0-4
    second = build_backbone("digits_resnet8", 5, weights="digits")
    assert torch.equal(first.model.conv1.weight, second.model.conv1.weight)
