"""One training step of a method on fixed data, as a script: run alone on the whole batch, or
under `torchrun --nproc_per_node N` with each rank on its 1/N of it. Rank 0 saves the loss and
the (DDP-averaged) gradients, which must equal the single process's.

BatchNorm layers run on their (fixed) running statistics: with batch statistics each rank
normalises by its own shard (torch's SyncBatchNorm, `train.sync_bn`, is CUDA-only), which would
hide what is tested here: that the contrast covers the global batch.
"""

import sys

import torch
from torch import nn

from excon import distributed
from excon.config import load_config
from excon.methods import COUNT_STATS, StepContext, get_method
from excon.models import ExConNet
from excon.saliency import GradCam, default_layer
from excon.train import StepModule, trained_modules

GLOBAL_BATCH, CLASSES, SIZE = 8, 4, 16


def main(method_name: str, out: str) -> None:
    dist, _ = distributed.setup(torch.device("cpu"))
    cfg = load_config(None, [f"method.name={method_name}", "method.exp_epochs=0"])
    method = get_method(method_name)
    torch.manual_seed(0)
    model = ExConNet(CLASSES, "resnet18", 0.0625, 3, 8)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g) for _ in method.views]
    labels = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
    per_rank = GLOBAL_BATCH // dist.world_size
    shard = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)

    step: nn.Module = StepModule(model, method, trained_modules(model, method, "epoch"))
    if dist.enabled:
        step = nn.parallel.DistributedDataParallel(step)
    gradcam = GradCam(model, default_layer("resnet18", SIZE)) if method.uses_saliency else None
    ctx = StepContext(cfg.method, epoch=0, num_classes=CLASSES, gradcam=gradcam)
    loss, stats = step([v[shard] for v in views], labels[shard], ctx)
    loss.backward()
    counts = {"backgrounds": stats.get("backgrounds", torch.zeros(()))}
    backgrounds = distributed.reduce_over_ranks(counts, summed=COUNT_STATS)["backgrounds"]
    if dist.is_main:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads, "backgrounds": backgrounds}, out)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
