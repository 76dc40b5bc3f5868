"""Independent, reproducible random streams derived from one user seed.

Each consumer (weight init, sample order, augmentation, ...) seeds its own generator from
(seed, stream, keys) through numpy's SeedSequence, which hashes its entropy so that nearby
inputs give unrelated states. Seeding two consumers with the same integer would make them
draw the same Mersenne Twister numbers: the crop of the first image of an epoch would then
be a function of the draws that chose that image.
"""

from __future__ import annotations

import numpy as np

# Fixed ids, never renumbered: changing one changes every result seeded through it.
STREAMS = {"init": 0, "shuffle": 1, "augment": 2, "probe_init": 3, "probe_order": 4, "workers": 5}


def stream_seed(seed: int, stream: str, *keys: int) -> int:
    """A 62-bit seed for `stream`, further keyed by e.g. (epoch, rank). 62 bits leave room
    for DistributedSampler, which adds the epoch to its seed."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"seeds and stream keys must be non-negative, got {seed}, {keys}")
    state = np.random.SeedSequence([seed, STREAMS[stream], *keys]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(2))
