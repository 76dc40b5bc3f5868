import pytest
import torch

from excon.models import CifarResNet, ExConNet


@pytest.mark.parametrize(("arch", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_full_width_matches_torchvision_shapes(arch, dim):
    enc = CifarResNet(arch, width=1.0, in_channels=3)
    assert enc.feature_dim == dim
    # CIFAR stem: 3x3 stride-1 conv, no max-pool
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert isinstance(enc.maxpool, torch.nn.Identity)
    with torch.no_grad():
        out = enc.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)


def test_width_multiplier_scales_every_stage():
    enc = CifarResNet("resnet18", width=0.25, in_channels=1)
    assert enc.conv1.in_channels == 1
    assert [enc.layer1[0].conv1.in_channels, enc.layer2[1].conv2.out_channels] == [16, 32]
    assert enc.feature_dim == 128
    full = sum(p.numel() for p in CifarResNet("resnet18").parameters())
    small = sum(p.numel() for p in enc.parameters())
    assert small < full / 10


def test_reference_gradcam_layers_exist():
    # The reference's Grad-CAM layers must be addressable by the same names.
    assert isinstance(CifarResNet("resnet18").layer2[1].conv2, torch.nn.Conv2d)
    assert isinstance(CifarResNet("resnet18").layer4[1].conv2, torch.nn.Conv2d)
    assert isinstance(CifarResNet("resnet50", 0.25).layer2[3].conv3, torch.nn.Conv2d)
    assert isinstance(CifarResNet("resnet50", 0.25).layer4[2].conv3, torch.nn.Conv2d)


def test_net_heads():
    net = ExConNet(num_classes=7, arch="resnet18", width=0.125, in_channels=3, proj_dim=16)
    x = torch.randn(4, 3, 16, 16)
    assert net(x).shape == (4, 7)
    z = net.projector(net.encoder(x))
    assert z.shape == (4, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        CifarResNet("vgg11")
