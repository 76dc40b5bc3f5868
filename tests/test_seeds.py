import pytest
import torch

from excon.seeds import STREAMS, stream_seed


def test_stream_seed_is_deterministic_and_fits_torch_generators():
    a = stream_seed(0, "augment", 3, 1)
    assert a == stream_seed(0, "augment", 3, 1)
    assert 0 <= a < 2**62
    torch.Generator().manual_seed(a + 10_000)  # DistributedSampler adds the epoch


def test_streams_epochs_and_ranks_never_share_a_seed():
    seeds = [
        stream_seed(s, name, e, r)
        for s in range(3)
        for name in STREAMS
        for e in range(20)
        for r in range(4)
    ]
    assert len(set(seeds)) == len(seeds)


def test_shuffle_and_augmentation_of_one_epoch_draw_different_numbers():
    # The bug this module fixes: order and views seeded alike drew the same random numbers.
    order = torch.Generator().manual_seed(stream_seed(0, "shuffle", 0))
    views = torch.Generator().manual_seed(stream_seed(0, "augment", 0, 0))
    assert not torch.equal(torch.rand(64, generator=order), torch.rand(64, generator=views))


@pytest.mark.parametrize("args", [(0, "shufle"), (-1, "init"), (0, "augment", -2)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError):
        stream_seed(*args)
