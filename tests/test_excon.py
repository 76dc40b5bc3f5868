"""ExCon's faithful rules, each on a constructed case."""

import pytest
import torch
import torch.nn.functional as F

from excon.config import MethodConfig
from excon.losses import supcon_loss
from excon.methods import StepContext, excon_step, excon_views, masking_active
from excon.models import ExConNet
from excon.saliency import GradCam, keep_mask, mask_images
from excon.testing import rig

C = 4  # classes


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ExConNet(num_classes=C, arch="resnet18", width=0.125, in_channels=3, proj_dim=8)


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(3)]
    labels = torch.arange(n) % C
    return views, labels


def ctx_for(net, **cfg):
    return StepContext(
        MethodConfig(**cfg), epoch=10, num_classes=C, gradcam=GradCam(net, "layer2[1].conv2")
    )


def test_all_accepted(net):
    (standard, random, spare), y = batch()
    head = rig(net)
    head.targets = y  # the head predicts the true label on every masked image
    ctx = ctx_for(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    v = excon_views(net, standard, random, spare, y, ctx)
    assert v.accepted.all()
    assert v.view1.shape[0] == v.view2.shape[0] == v.labels.shape[0] == 6
    assert torch.equal(v.labels, y)
    assert not v.background.any()
    assert torch.equal(v.view2, random)
    # view 1 is exactly the standard view masked by its true-label Grad-CAM (train mode)
    net.load_state_dict(state)
    maps = GradCam(net, "layer2[1].conv2")(standard, y)
    assert torch.equal(v.view1, mask_images(standard, keep_mask(maps, 0.5)))


def test_all_rejected_become_background_negatives(net):
    (standard, random, spare), y = batch()
    rig(net).targets = (y + 1) % C  # always wrong
    v = excon_views(net, standard, random, spare, y, ctx_for(net))
    assert not v.accepted.any()
    assert v.view1.shape[0] == v.view2.shape[0] == 12  # batch grows by the rejected images
    assert torch.equal(v.view1[:6], spare)  # the spare random view replaces the masked one
    assert torch.equal(v.view2[:6], random)
    assert torch.equal(v.view1[6:], v.masked) and torch.equal(v.view2[6:], v.masked)
    assert v.labels.tolist() == y.tolist() + [C] * 6
    assert v.background.tolist() == [False] * 6 + [True] * 6


def test_mixed_keeps_batch_order_and_negative_pair_off(net):
    (standard, random, spare), y = batch()
    wrong = torch.tensor([False, True, False, True, True, False])
    rig(net).targets = torch.where(wrong, (y + 1) % C, y)
    v = excon_views(net, standard, random, spare, y, ctx_for(net))
    assert v.accepted.tolist() == (~wrong).tolist()
    assert torch.equal(v.view1[:6][~wrong], v.masked[~wrong])
    assert torch.equal(v.view1[:6][wrong], spare[wrong])
    assert torch.equal(v.view1[6:], v.masked[wrong])  # appended in batch order (1, 3, 4)
    assert v.labels.tolist() == y.tolist() + [C] * 3

    off = excon_views(net, standard, random, spare, y, ctx_for(net, negative_pair=False))
    assert off.view1.shape[0] == 6 and not off.background.any()
    assert torch.equal(off.view1[wrong], spare[wrong])


def reference_loss(features, labels, actual_bsz, background_anchor, temperature=0.1, base=0.07):
    """The authors' SupConLoss.forward (losses.py) for contrast_mode='all', written out."""
    bsz, views = features.shape[:2]
    mask = torch.eq(labels[:, None], labels[None, :]).float()
    if background_anchor == 0:
        mask[actual_bsz:] = 0
        mask[:, actual_bsz:] = 0
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(views, views)
    logits_mask = 1 - torch.eye(bsz * views)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    denom = mask.sum(1)
    if background_anchor == 0:
        denom[denom == 0] = 1
    loss = -(temperature / base) * (mask * log_prob).sum(1) / denom
    if background_anchor == 1:
        return loss.view(views, bsz).mean()
    return loss.view(views, bsz).mean() * (bsz / actual_bsz)


@pytest.mark.parametrize("n_bg", [0, 1, 3])
def test_loss_with_backgrounds_equals_reference_rule(n_bg):
    torch.manual_seed(n_bg)
    real = torch.tensor([0, 1, 0, 2, 1])
    labels = torch.cat([real, torch.full((n_bg,), C)])
    feats = F.normalize(torch.randn(len(labels), 2, 8, dtype=torch.float64), dim=2)
    background = torch.arange(len(labels)) >= len(real)
    got = supcon_loss(feats, labels, 0.1, 0.07, background)
    assert got.item() == pytest.approx(reference_loss(feats, labels, len(real), 0).item(), abs=1e-6)
    # background_anchor=1: backgrounds are one more class, the plain loss
    got1 = supcon_loss(feats, labels, 0.1, 0.07)
    assert got1.item() == pytest.approx(
        reference_loss(feats, labels, len(real), 1).item(), abs=1e-6
    )


def test_background_only_in_denominators():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(4, 2, 8, dtype=torch.float64), dim=2)
    labels = torch.tensor([0, 1, C, C])
    bg = torch.tensor([False, False, True, True])
    base = supcon_loss(feats[:2], labels[:2])
    with_bg = supcon_loss(feats, labels, background=bg)
    assert with_bg > base  # more negatives in every denominator, same positives


def test_excon_step_uses_backgrounds_in_the_loss(net):
    (standard, random, spare), y = batch()
    rig(net).targets = (y + 1) % C
    net.eval()  # fixed BN so the loss can be recomputed from the views
    ctx = ctx_for(net)
    out = excon_step(net, [standard, random, spare], y, ctx)
    v = excon_views(net, standard, random, spare, y, ctx)
    z = torch.stack([net.projector(net.encoder(v.view1)), net.projector(net.encoder(v.view2))], 1)
    assert out.loss.item() == pytest.approx(
        supcon_loss(z, v.labels, 0.1, 0.07, v.background).item(), rel=1e-5
    )
    assert out.stats["accept_rate"] == 0 and out.stats["backgrounds"] == 6

    anchor = ctx_for(net, background_anchor=True)
    out1 = excon_step(net, [standard, random, spare], y, anchor)
    assert out1.loss.item() == pytest.approx(supcon_loss(z, v.labels, 0.1, 0.07).item(), rel=1e-5)


def test_exp_epochs_switch(net):
    cfg = MethodConfig(exp_epochs=3)
    # 1-based epochs as in the reference: epochs 1, 2 are SupCon; masking from epoch 3.
    assert [masking_active(cfg, e) for e in range(5)] == [False, False, True, True, True]
    assert masking_active(MethodConfig(exp_epochs=0), 0)

    class Spy(GradCam):
        calls = 0

        def __call__(self, images, targets):
            Spy.calls += 1
            return super().__call__(images, targets)

    (standard, random, spare), y = batch()
    rig(net).targets = y
    net.eval()
    ctx = StepContext(cfg, epoch=1, num_classes=C, gradcam=Spy(net, "layer2[1].conv2"))
    before = excon_step(net, [standard, random, spare], y, ctx)
    assert Spy.calls == 0 and "accept_rate" not in before.stats
    z = torch.stack([net.projector(net.encoder(spare)), net.projector(net.encoder(random))], 1)
    assert before.loss.item() == pytest.approx(supcon_loss(z, y).item(), rel=1e-5)
    ctx.epoch = 2
    after = excon_step(net, [standard, random, spare], y, ctx)
    assert Spy.calls == 1 and after.stats["accept_rate"] == 1


def test_online_head_ignores_backgrounds(net):
    (standard, random, spare), y = batch()
    rig(net).targets = (y + 1) % C
    out = excon_step(net, [standard, random, spare], y, ctx_for(net, head_training="online"))
    out.loss.backward()  # a background label (= C) reaching the head would raise here
    assert torch.isfinite(out.stats["head_loss"])


# --- rules pinned with heads that depend on their input --------------------------------------
# The rigged head above ignores its input, so it cannot tell which class Grad-CAM explains or
# which image the accept test looks at. These use the real linear head, and references computed
# independently (captum's LayerGradCam on the plain model, the head applied by hand).


def _captum_maps(net, images, targets):
    from captum.attr import LayerAttribution, LayerGradCam

    layer = net.encoder.layer2[1].conv2
    cam = LayerGradCam(net, layer).attribute(images, target=targets, relu_attributions=False)
    return LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")


def test_training_explains_the_true_class_not_the_predicted_one(net):
    views, _ = batch(8)
    net.train()
    with torch.no_grad():
        predicted = net(views[0]).argmax(1)
    labels = (predicted + 1) % C  # every true label differs from the prediction
    v = excon_views(net, *views, labels, ctx_for(net, tau=0.5))
    net.train()  # as excon_views leaves it: Grad-CAM runs in train mode, as the reference
    true_maps = _captum_maps(net, views[0], labels)
    predicted_maps = _captum_maps(net, views[0], predicted)
    torch.testing.assert_close(v.saliency, true_maps.detach(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v.saliency, predicted_maps.detach(), rtol=1e-3, atol=1e-4)


class MaskDetector(torch.nn.Module):
    """A head that answers class 0 only for the masked images it was shown, class 1 for anything
    else. Its small linear part gives Grad-CAM a real gradient (the maps are not flat)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.reference: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = 1e-3 * self.linear(features)
        if self.reference is not None:
            hit = torch.isclose(features, self.reference, rtol=1e-3, atol=1e-4).all(1)
            logits = logits + 10 * F.one_hot(torch.zeros_like(hit, dtype=torch.long), C) * hit[
                :, None
            ].to(logits.dtype)
        return logits + 5 * F.one_hot(torch.ones(len(features), dtype=torch.long), C)


def test_acceptance_is_judged_on_the_masked_image(net):
    views, _ = batch(6)
    labels = torch.zeros(6, dtype=torch.long)  # class 0: what the detector says of masked images
    net.eval()  # fixed BN statistics: the same masked image gives the same features twice
    net.classifier = detector = MaskDetector(net.classifier)
    ctx = ctx_for(net, tau=0.5)
    masked = mask_images(views[0], keep_mask(ctx.gradcam(views[0], labels), 0.5))
    assert masked.abs().sum() > 0 and (masked == 0).any()  # a real mask: some pixels kept
    with torch.no_grad():
        detector.reference = net.encoder(masked)
    v = excon_views(net, *views, labels, ctx)
    assert v.accepted.all()  # judged on the masked images: all accepted
    torch.testing.assert_close(v.view1, masked)
    # judged on the unmasked images, the same head would reject every one
    with torch.no_grad():
        assert (net(views[0]).argmax(1) != labels).all()


def test_the_head_epoch_trains_the_head_only_once_per_encoder_epoch(tmp_path, monkeypatch):
    """One head epoch after each encoder epoch, on detached features: the encoder's weights are
    unchanged by it and no gradient reaches the encoder."""
    from excon import train
    from tests.conftest import TINY, make_prepared

    data = make_prepared(tmp_path / "data", channels=3)
    cfg = __import__("excon.config", fromlist=["load_config"]).load_config(
        None, [*TINY, "method.name=supcon", "train.epochs=2", "method.head_training=epoch"]
    )
    calls, real = [], train.train_head_one_epoch

    def spy(model, cfg_, optimizer, loader, device, epoch, classifier=None):
        before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        grads = [None if p.grad is None else p.grad.clone() for p in model.encoder.parameters()]
        out = real(model, cfg_, optimizer, loader, device, epoch, classifier)
        after = model.encoder.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), (
            "the head epoch moved the encoder"
        )
        for g, p in zip(grads, model.encoder.parameters(), strict=True):  # no gradient reached it
            assert (g is None and p.grad is None) or torch.equal(g, p.grad)
        calls.append(epoch)
        return out

    monkeypatch.setattr(train, "train_head_one_epoch", spy)
    train.pretrain(cfg, data, tmp_path / "run")
    assert calls == [0, 1]  # exactly one head epoch per encoder epoch, in order


@pytest.mark.parametrize("precision", ["default", "amp"])
def test_saliency_runs_in_fp32_under_bf16_autocast_by_default(net, precision):
    """The default recipe trains under bf16 autocast (train.amp); Grad-CAM, the mask and the
    accept test must still run in fp32 (method.saliency_precision=fp32) and decide as a run
    without autocast does. CPU autocast stands in for CUDA's: the code path is the same."""
    views, labels = batch(8)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fp32 = excon_views(net, *views, labels, ctx_for(net, tau=0.5))
    net.load_state_dict(state)  # the train-mode forwards moved BatchNorm's running statistics
    seen: list[torch.dtype] = []
    hook = net.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    chosen = {} if precision == "default" else {"saliency_precision": precision}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = excon_views(net, *views, labels, ctx_for(net, tau=0.5, **chosen))
    hook.remove()
    if precision == "default":
        assert set(seen) == {torch.float32}  # Grad-CAM's and the accept test's logits
        assert torch.equal(mixed.accepted, fp32.accepted)
        assert torch.equal(mixed.saliency, fp32.saliency)
    else:  # the mutation the default guards against: autocast reaches saliency
        assert torch.bfloat16 in seen
