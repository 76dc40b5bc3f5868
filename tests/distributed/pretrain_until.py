"""`excon.train.pretrain` as a script for torchrun, optionally killed right after epoch N's
checkpoint is written (rank 0 exits; torchrun then stops the other ranks, as a preempted job)."""

import sys

from excon.config import load_config
from excon.train import pretrain


def main(data: str, run: str, stop_after: int, resume: bool, *overrides: str) -> None:
    cfg = load_config(None, list(overrides))

    def maybe_die(row: dict) -> None:
        if row["epoch"] == stop_after:
            print(f"simulated kill after epoch {stop_after}", file=sys.stderr, flush=True)
            sys.exit(3)

    pretrain(cfg, data, run, resume=resume, on_epoch=maybe_die)


if __name__ == "__main__":
    data, run, stop, resume, *rest = sys.argv[1:]
    main(data, run, int(stop), resume == "resume", *rest)
