import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from excon.models import ExConNet
from excon.saliency import (
    GradCam,
    default_layer,
    keep_mask,
    mask_images,
    normalise_maps,
    resolve_layer,
)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ExConNet(num_classes=5, arch="resnet18", width=0.125, in_channels=3)


@pytest.mark.parametrize("train_mode", [True, False])
def test_gradcam_equals_captum(net, train_mode):
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    net.train(train_mode)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    got = GradCam(net, "layer2[1].conv2")(x, y)
    net.load_state_dict(state)  # same BN statistics for captum's own pass
    raw = LayerGradCam(net, net.encoder.layer2[1].conv2).attribute(x, target=y)
    want = LayerAttribution.interpolate(raw, (16, 16), interpolate_mode="bilinear")
    assert got.shape == (6, 1, 16, 16)
    assert torch.allclose(got, want, atol=1e-6)
    # relu_attributions=False (the reference's default) keeps negative evidence
    assert (got < 0).any()


def test_gradcam_matches_the_definition(net):
    """Independent check: weights = spatial mean of d(target logit)/d(activation)."""
    net.eval()
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([4, 1, 1])
    layer = net.encoder.layer4[1].conv2
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = net(x)
    handle.remove()
    grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), acts["a"])[0]
    cam = (grads.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True)
    want = torch.nn.functional.interpolate(cam, size=(16, 16), mode="bilinear")
    got = GradCam(net, "layer4[1].conv2")(x, y)
    assert torch.allclose(got, want.detach(), atol=1e-5)


def test_gradcam_leaves_no_parameter_gradients(net):
    GradCam(net, "layer2[1].conv2")(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert all(p.grad is None for p in net.parameters())


def reference_mask(explanation, tau):
    """The reference's numpy steps (data_aug.aug_no_bbox_mc) on [B, H, W] maps."""
    e = explanation.transpose(1, 2, 0)
    e = e - np.min(e, axis=(0, 1))
    e = e / (np.max(e, axis=(0, 1)) + 1e-8)
    return (e <= tau).transpose(2, 0, 1)  # True = pixel set to 0


def test_known_map_gives_expected_mask():
    # One image, a ramp from -3 to 5: normalised (v + 3) / 8.
    ramp = torch.linspace(-3, 5, 9).view(1, 1, 3, 3)
    keep = keep_mask(ramp, tau=0.5)
    # normalised values 0, .125, ..., 1: <= 0.5 (first five) dropped
    assert keep.flatten().tolist() == [False] * 5 + [True] * 4
    torch.manual_seed(3)
    maps = torch.randn(4, 1, 7, 7) * torch.tensor([1.0, 10.0, 0.01, 3.0])[:, None, None, None]
    for tau in (0.0, 0.3, 0.5, 0.9):
        want = ~torch.from_numpy(reference_mask(maps[:, 0].double().numpy(), tau))
        assert torch.equal(keep_mask(maps, tau)[:, 0], want)
    n = normalise_maps(maps)
    assert torch.allclose(n.amin(dim=(1, 2, 3)), torch.zeros(4))
    assert torch.allclose(n.amax(dim=(1, 2, 3)), torch.ones(4), atol=1e-6)


def test_flat_map_masks_everything():
    keep = keep_mask(torch.full((1, 1, 4, 4), 2.0), tau=0.5)
    assert not keep.any()  # the reference: 0 / (0 + 1e-8) = 0 <= tau


def test_masked_pixels_are_zero_in_normalised_space():
    images = torch.randn(2, 3, 4, 4)
    keep = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    keep[0, 0, 1, 2] = True
    out = mask_images(images, keep)
    assert torch.equal(out[0, :, 1, 2], images[0, :, 1, 2])
    assert out.abs().sum() == images[0, :, 1, 2].abs().sum()  # everything else is 0 = mean colour


def test_layers():
    assert default_layer("resnet18", 32) == "layer2[1].conv2"
    assert default_layer("resnet18", 28) == "layer2[1].conv2"
    assert default_layer("resnet18", 64) == "layer4[1].conv2"
    assert default_layer("resnet50", 32) == "layer2[3].conv3"
    assert default_layer("resnet50", 64) == "layer4[2].conv3"
    enc = ExConNet(3, "resnet18", 0.125).encoder
    assert resolve_layer(enc, "layer2[1].conv2") is enc.layer2[1].conv2
    with pytest.raises(ValueError, match="does not exist"):
        resolve_layer(enc, "layer9[0].conv1")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_layer(enc, "layer2[7].conv2")
    with pytest.raises(ValueError, match="cannot parse"):
        resolve_layer(enc, "layer2[x]")
