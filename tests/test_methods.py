import pytest
import torch
import torch.nn.functional as F

from excon.config import ConfigError, MethodConfig
from excon.losses import supcon_loss
from excon.methods import METHODS, StepContext, ce_step, get_method, supcon_step
from excon.models import ExConNet


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ExConNet(num_classes=3, arch="resnet18", width=0.0625, in_channels=1, proj_dim=8)


def test_views_per_method():
    assert METHODS["ce"].views == ("ce",)
    assert METHODS["supcon"].views == ("random", "random")
    with pytest.raises(ConfigError, match="allowed: ce, supcon, excon"):
        get_method("byol")


def test_supcon_step_is_the_loss_on_stacked_views(net):
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    y = torch.tensor([0, 1, 0, 2])
    net.eval()  # BN in eval: the same features whichever way the views are batched
    out = supcon_step(net, views, y, StepContext(MethodConfig(head_training="epoch")))
    z = torch.stack([net.projector(net.encoder(v)) for v in views], dim=1)
    assert torch.allclose(out.loss, supcon_loss(z, y, 0.1, 0.07), atol=1e-5)
    assert "head_loss" not in out.stats


def test_online_head_loss_does_not_reach_the_encoder(net):
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    y = torch.tensor([0, 1, 0, 2])
    supcon_step(net, views, y, StepContext(MethodConfig(head_training="epoch"))).loss.backward()
    plain = {n: p.grad.clone() for n, p in net.encoder.named_parameters()}
    net.zero_grad(set_to_none=True)
    out = supcon_step(net, views, y, StepContext(MethodConfig(head_training="online")))
    assert out.loss > out.stats["contrastive_loss"]
    out.loss.backward()
    assert net.classifier.weight.grad.abs().sum() > 0
    for n, p in net.encoder.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-6), n


def test_ce_step(net):
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    out = ce_step(net, [x], y, StepContext(MethodConfig()))
    net.train()
    assert out.loss.item() == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-4)


def test_per_view_batchnorm_normalises_each_view_as_its_own_batch(net):
    """train.bn=per_view: outputs equal each view through the encoder alone, as the reference's
    two-GPU DataParallel (one view per GPU); running statistics follow view 1 only (device 0's
    replica). The default (whole batch) differs."""
    import copy

    from excon.methods import encode_views

    torch.manual_seed(1)
    views = [torch.randn(6, 1, 16, 16), 3 + 2 * torch.randn(6, 1, 16, 16)]  # unlike statistics
    net.train()
    alone, second, per_view, whole = (copy.deepcopy(net.encoder) for _ in range(4))
    expected = torch.cat([alone(views[0]), second(views[1])])
    got = encode_views(per_view, views, "per_view")
    torch.testing.assert_close(got, expected)
    # and it trains: the gradient is the sum of the two separate runs' (backward must not trip
    # over BatchNorm buffers the second view's forward touched)
    expected.square().sum().backward()
    got.square().sum().backward()
    for a, b, p in zip(alone.parameters(), second.parameters(), per_view.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a.grad + b.grad)
    for a, b in zip(alone.buffers(), per_view.buffers(), strict=True):
        assert torch.equal(a, b)  # running statistics: view 1's batch only
    batched = encode_views(whole, views, "batch")
    assert not torch.allclose(batched, got, atol=1e-3)
    bn = next(m for m in whole.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_view = next(m for m in per_view.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, bn_view.running_mean)
