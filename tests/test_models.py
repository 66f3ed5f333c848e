import pytest
import torch
import torch.nn as nn

from ddcore.models import ConvNet, ModelConfig, available_models, build_model, count_flops, create_model

SHAPES = [(1, (28, 28)), (3, (32, 32)), (1, (16, 16))]


@pytest.mark.parametrize("name", ["convnet", "mlp", "resnet18"])
@pytest.mark.parametrize("channels,im_size", SHAPES)
def test_every_model_gives_logits_and_features(name, channels, im_size):
    kwargs = {} if name == "resnet18" else {"width": 16}
    net = create_model(name, channels, 10, im_size, **kwargs)
    x = torch.randn(4, channels, *im_size)
    assert net(x).shape == (4, 10)
    assert net.embed(x).shape == (4, net.feature_dim)


def test_registry_lists_the_networks():
    assert {"convnet", "mlp", "resnet18"} <= set(available_models())


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "none"])
def test_convnet_norms(norm):
    net = ConvNet(1, 10, (28, 28), width=8, norm=norm)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_convnet_matches_the_reference_definition():
    """Parity with the field's ConvNet-3: conv(pad 3 for 28x28) -> GroupNorm(C, C) -> ReLU -> avgpool x3."""
    torch.manual_seed(0)
    net = ConvNet(1, 10, (28, 28), width=16)
    ref, in_ch = [], 1
    for d in range(3):
        ref += [
            nn.Conv2d(in_ch, 16, 3, padding=3 if d == 0 else 1),
            nn.GroupNorm(16, 16, affine=True),
            nn.ReLU(),
            nn.AvgPool2d(2, 2),
        ]
        in_ch = 16
    ref = nn.Sequential(*ref, nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    ours = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.Linear))]
    theirs = [m for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.Linear))]
    for a, b in zip(ours, theirs):
        b.load_state_dict(a.state_dict())
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(net(x), ref(x))
    assert net.feature_dim == 16 * 4 * 4


def test_instance_norm_is_one_group_per_channel():
    net = ConvNet(3, 10, (32, 32), width=32)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 32 for m in norms)


def test_build_model_passes_only_known_options():
    net = build_model(ModelConfig(name="mlp", width=32, depth=5), 1, 10, (28, 28))
    assert net.feature_dim == 32


def test_gradient_reaches_the_input():
    net = ConvNet(1, 10, (28, 28), width=8)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = ConvNet(1, 10, (28, 28), width=8)
    torch.manual_seed(3)
    b = ConvNet(1, 10, (28, 28), width=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_flop_count_matches_the_hand_formula():
    net = ConvNet(1, 10, (28, 28), width=128)
    expected = 2 * 9 * (1 * 128 * 32 * 32 + 128 * 128 * 16 * 16 + 128 * 128 * 8 * 8) + 2 * 2048 * 10
    assert count_flops(net, torch.randn(1, 1, 28, 28)) == expected


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"norm": "group"}, "norm='group' is not allowed"),
        ({"act": "gelu"}, "act='gelu' is not allowed"),
        ({"depth": 6}, "too deep"),
        ({"width": 0}, "width=0 is too small"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNet(1, 10, (28, 28), **kwargs)


def test_wrong_input_shape_is_named():
    net = ConvNet(1, 10, (28, 28), width=8)
    with pytest.raises(ValueError, match="3 channels; this model expects 1"):
        net(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"image size \(32, 32\)"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown|not allowed"):
        create_model("vgg", 1, 10, (28, 28))
