"""FeatureMaps / find_stride_layer on real torchvision and EfficientNet-Lite0 backbones."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sgcl_plugin.features import FeatureMaps, find_stride_layer


def test_torchvision_resnet_stages() -> None:
    net = torchvision.models.resnet18()
    assert find_stride_layer(net, 8) == "layer2"
    assert find_stride_layer(net, 16) == "layer3"
    assert find_stride_layer(net, 32) == "layer4"
    trunk = nn.Sequential(*list(net.children())[:-2])  # the usual "backbone without its head"
    assert find_stride_layer(trunk, 16) == "6"
    assert find_stride_layer(trunk, 32) == ""  # the trunk's own output


def test_layer3_map_equals_the_manual_forward_and_stops_early() -> None:
    net = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 96, 128)
    fm = FeatureMaps(net, stride=16)
    assert fm.layers == ["layer3"]
    with torch.no_grad():
        manual = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        calls = []
        hook = net.layer4.register_forward_hook(lambda *a: calls.append(1))
        out = fm(x)
        hook.remove()
    assert out.shape == (2, 256, 6, 8)
    torch.testing.assert_close(out, manual)
    assert calls == []  # the forward stopped after layer3


def test_several_layers_are_normalized_and_resized_to_the_finest() -> None:
    net = torchvision.models.resnet18().eval()
    fm = FeatureMaps(net, layers=["layer3", "layer4"])
    with torch.no_grad():
        out = fm(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 256 + 512, 8, 8)
    norms = torch.stack([out[:, :256].norm(dim=1), out[:, 256:].norm(dim=1)])
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_shared_modules_and_bad_names() -> None:
    class Shared(nn.Module):  # one activation module used at two strides
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.b(self.act(self.a(x))))

    m = Shared()
    assert find_stride_layer(m, 2) == "a"  # "act" also outputs stride 2 once, but runs twice
    fm = FeatureMaps(m, layers=["act"])  # the last call's output, not the first
    assert fm(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="no module named"):
        FeatureMaps(m, layers=["nope"])
    with pytest.raises(ValueError, match="stride 64"):
        FeatureMaps(m, stride=64)


def test_tokens_only_model_points_to_tokens_to_map() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.flatten(2).transpose(1, 2))

    with pytest.raises(ValueError, match="tokens_to_map"):
        FeatureMaps(Tokens(), stride=16)


def test_efficientnet_lite0_block_10() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from sgcl_plugin.backbones import efficientnet_lite0

    net = efficientnet_lite0(pretrained=False).eval()
    assert find_stride_layer(net, 16) == "trunk._blocks.10"
    with torch.no_grad():
        out = FeatureMaps(net, stride=16)(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 112, 14, 14)


def test_a_stride_pair_returns_both_raw_maps() -> None:
    net = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        fine, coarse = FeatureMaps(net, stride=(16, 32))(x)
        trunk = nn.Sequential(*list(net.children())[:-2])
        l3 = nn.Sequential(*list(net.children())[:-3])
        torch.testing.assert_close(fine, l3(x))
        torch.testing.assert_close(coarse, trunk(x))
    assert FeatureMaps(net, stride=(16, 32)).layers == ["layer3", "layer4"]
    for bad in ((32, 16), (16, 16), (16, 32, 64), (0, 32), (16.0, 32)):
        with pytest.raises(ValueError, match="stride"):
            FeatureMaps(net, stride=bad)  # type: ignore[arg-type]


def test_hierarchy_strides_and_refresh_features() -> None:
    from sgcl_plugin.backbones import tiny_resnet
    from sgcl_plugin.features import check_stride, hierarchy_strides, refresh_features

    resnet = torchvision.models.resnet18().eval()
    assert hierarchy_strides(resnet) == (16, 32)
    assert hierarchy_strides(nn.Sequential(*list(resnet.children())[:-2])) == (16, 32)
    tiny = tiny_resnet()
    assert hierarchy_strides(tiny) == (8, 16)  # its last map is at stride 16
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        fine, coarse = refresh_features(tiny, "auto", "hierarchy")(x)
        assert fine.shape[-1] == 16 and coarse.shape[-1] == 8
        assert refresh_features(tiny, "auto", "objects")(x).shape[-1] == 8  # other modes: the last map
        assert refresh_features(resnet, 16, "paper")(x).shape[-1] == 8
        assert len(refresh_features(resnet, [16, 32], "hierarchy")(x)) == 2  # a YAML list
    for bad in (0, "16", (32, 16), True):
        with pytest.raises(ValueError, match="feature_stride"):
            check_stride(bad)


def test_refresh_reads_a_pair_of_maps() -> None:
    from sgcl_plugin import SaliencyGenerator, refresh_bank

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    images = [torch.rand(3, 96, 128) for _ in range(3)]
    bank = refresh_bank(
        SaliencyGenerator(), FeatureMaps(net, stride=(16, 32)), images, saliency_size=128, progress=False
    )
    assert (bank.counts > 0).all() and bank.refreshes == 1
    with pytest.raises(TypeError, match="pair"):
        refresh_bank(SaliencyGenerator(), lambda x: (x, x, x), images, saliency_size=128, progress=False)
