"""Named seed streams: every random draw of the defense comes from one of these, derived from the
run's seed, so two searches never share a generator and the same seed gives the same numbers."""

from __future__ import annotations

RUN_STRIDE = 1_000_003  # a run seed's streams start at seed * RUN_STRIDE (prime: nearby seeds do not overlap)
RACE_FAMILY_STRIDE = 10_007  # stage 1's race: one stream per perturbation family, then one per class
RESTART_STRIDE = 777_767  # refinements: one stream per restart of a class's search

# each refinement detector's block of streams (one per class inside it)
PATCH_STREAM, STRIPES_STREAM, LINF_STREAM = 0, 500_009, 700_001
COLLAPSE_STREAM = 900_007  # the class-free collapse search (one search, no class)
# stage 1's group screen: per round, a partition then one stream per UAP (distinct while groups x families
# < the stride: sqrt(C) groups keep that up to 10^8 classes)
SCREEN_STREAM, SCREEN_ROUND_STRIDE = 300_007, 20_011


def race(seed: int, family: int, cls: int) -> int:
    """The generator seed of stage 1's short targeted UAP of race family ``family`` toward class ``cls``."""
    return seed * RUN_STRIDE + family * RACE_FAMILY_STRIDE + cls


def screen(seed: int, round_: int, k: int) -> int:
    """The generator seed of the group screen's round ``round_``: its partition (k = 0), then its UAPs (k >= 1)."""
    return seed * RUN_STRIDE + SCREEN_STREAM + round_ * SCREEN_ROUND_STRIDE + k


def refinement(seed: int, stream: int, cls: int) -> int:
    """The base of a refinement detector's restarts toward class ``cls`` (see :func:`restart`)."""
    return seed * RUN_STRIDE + stream + cls


def restart(base: int, r: int) -> int:
    """Restart ``r`` (from 0) of a refinement whose base is ``base``."""
    return base + RESTART_STRIDE * (r + 1)


def purification_round(seed: int, r: int) -> int:
    """Stage 3's round ``r`` (from 0): its re-inversion, tuning and checks."""
    return seed + r
