"""Grad-CAM explanations (captum) and the saliency masks ExCon builds from them, batched.

Faithful to the reference (DarrenZhang01/ExCon `explainer.py` / `data_aug.py`):
- captum `LayerGradCam` on encoder + linear head at a named encoder layer, `relu_attributions`
  off, upsampled bilinearly to the image size;
- per-image min-max normalisation `(m - min) / (max(m - min) + 1e-8)`;
- pixels with normalised saliency <= tau are set to 0 in *normalised* image space, i.e. to the
  dataset mean colour.
Everything stays on the device; nothing is copied to the host.
"""

from __future__ import annotations

import re

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from excon.config import ConfigError
from excon.models import ExConNet

# The reference's layers: an early layer for 32 px data, the last block for 64 px data.
_DEFAULT_LAYERS = {
    ("resnet18", "small"): "layer2[1].conv2",
    ("resnet18", "large"): "layer4[1].conv2",
    ("resnet50", "small"): "layer2[3].conv3",
    ("resnet50", "large"): "layer4[2].conv3",
}


def default_layer(arch: str, image_size: int) -> str:
    """The reference's Grad-CAM layer for `arch` at this input size (<= 32 px: CIFAR's)."""
    return _DEFAULT_LAYERS[(arch, "small" if image_size <= 32 else "large")]


def resolve_layer(encoder: nn.Module, spec: str) -> nn.Module:
    """`"layer2[1].conv2"` -> that submodule of the encoder; a clear error otherwise."""
    module = encoder
    for part in spec.split("."):
        m = re.fullmatch(r"([A-Za-z_]\w*)((?:\[\d+\])*)", part)
        if m is None:
            raise ConfigError(f"gradcam layer {spec!r}: cannot parse {part!r}")
        try:
            module = getattr(module, m.group(1))
            for index in re.findall(r"\[(\d+)\]", m.group(2)):
                module = module[int(index)]
        except (AttributeError, IndexError, TypeError):
            raise ConfigError(f"gradcam layer {spec!r} does not exist in the encoder") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"gradcam layer {spec!r} is not a module")
    return module


def _enable_grad(module: nn.Module, inputs: tuple) -> None:
    torch.set_grad_enabled(True)


class GradCam:
    """Grad-CAM of `model` (encoder + linear head) at one encoder layer, for a whole batch."""

    def __init__(self, model: ExConNet, layer: str, relu_attributions: bool = False) -> None:
        self.model = model
        self.layer_name = layer
        self.relu_attributions = relu_attributions
        self._layer = resolve_layer(model.encoder, layer)
        self._captum = LayerGradCam(self._forward, self._layer)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's forward with autograd recording only from the explained layer on: the
        gradient is taken with respect to that layer's output, so the graph of the layers
        before it would be built and thrown away (about 5 % of a Grad-CAM call here)."""
        handle = self._layer.register_forward_pre_hook(_enable_grad)
        try:
            with torch.no_grad():  # restores captum's grad mode on exit
                return self.model(images)
        finally:
            handle.remove()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images, [B] class ids -> [B, 1, H, W] maps (not normalised).

        Runs in whatever mode the model is in (the reference explains in train mode). Only the
        gradient with respect to the layer's output is computed, never parameter gradients.
        """
        cam = self._captum.attribute(
            images, target=targets, relu_attributions=self.relu_attributions
        )
        size = tuple(images.shape[-2:])
        return LayerAttribution.interpolate(cam.float(), size, interpolate_mode="bilinear").detach()


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1] as the reference does (+1e-8 for flat maps)."""
    flat = maps.flatten(1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    return (shifted / (shifted.max(dim=1, keepdim=True).values + 1e-8)).view_as(maps)


def keep_mask(maps: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean [B, 1, H, W]: True where the normalised saliency is above tau (pixels kept)."""
    return normalise_maps(maps) > tau


def mask_images(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero (in normalised space = the dataset mean colour) every pixel not kept."""
    return images * keep.to(images.dtype)
