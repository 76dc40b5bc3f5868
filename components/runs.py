"""Pairing a study's runs from the artifact lists a task gathers with `dsl.Collected`.

The report and register tasks take every seed's artifacts of a method as lists, one list per
kind (model, probe head, each evaluation part). Neither KFP backend nor kfp.local documents the
order of a collected list, so the lists are paired by the `seed` each producing task records in
its artifact's metadata, never by position.
"""

from collections.abc import Mapping, Sequence
from typing import Any


def by_seed(artifacts: Sequence[Any], what: str) -> dict[int, Any]:
    """seed -> artifact; a missing or repeated seed is a one-line error naming `what`."""
    found: dict[int, Any] = {}
    for artifact in artifacts:
        seed = (artifact.metadata or {}).get("seed")
        if seed is None:
            raise ValueError(f"{what}: artifact {artifact.uri} records no seed in its metadata")
        if int(seed) in found:
            raise ValueError(f"{what}: two artifacts for seed {int(seed)}")
        found[int(seed)] = artifact
    return found


def pair(lists: Mapping[str, Sequence[Any]], what: str) -> dict[int, dict[str, Any]]:
    """seed -> {kind: artifact} over `lists` (kind -> collected artifacts), seeds ascending;
    every kind must hold the same seeds."""
    grouped = {kind: by_seed(artifacts, f"{what} {kind}") for kind, artifacts in lists.items()}
    seeds = [sorted(g) for g in grouped.values()]
    if any(s != seeds[0] for s in seeds):
        got = {kind: sorted(g) for kind, g in grouped.items()}
        raise ValueError(f"{what}: the artifact lists hold different seeds: {got}")
    return {seed: {kind: grouped[kind][seed] for kind in grouped} for seed in seeds[0]}
