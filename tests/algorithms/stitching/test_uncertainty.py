"""Which pairs no loop checks: bridges of the pair graph, found in linear time."""

from __future__ import annotations

import time

import numpy as np

from imaxt_pipeline.algorithms.stitching import adjacent_pairs
from imaxt_pipeline.algorithms.stitching._uncertainty import bridges, components, unverified_tiles


def _bridges_by_removal(n, edges):
    """The definition: an edge is a bridge when removing it separates its ends."""
    out = np.zeros(len(edges), bool)
    for i in range(len(edges)):
        comp = components(n, [tuple(e) for e in np.delete(edges, i, axis=0)])
        out[i] = comp[edges[i, 0]] != comp[edges[i, 1]]
    return out


def test_bridges_agree_with_the_definition_on_random_grids():
    rng = np.random.default_rng(0)
    for _ in range(150):
        rows, cols = rng.integers(1, 7, 2)
        edges = np.array(adjacent_pairs(rows, cols)).reshape(-1, 2)
        edges = edges[rng.random(len(edges)) < rng.uniform(0.3, 1.0)]  # failed pairs dropped
        if len(edges) and rng.random() < 0.3:
            edges = np.concatenate([edges, edges[:1]])  # a doubled pair is never a bridge
        np.testing.assert_array_equal(bridges(rows * cols, edges), _bridges_by_removal(rows * cols, edges))


def test_a_50x50_grid_is_checked_in_well_under_a_second():
    pairs = adjacent_pairs(50, 50)
    t0 = time.perf_counter()
    loose = unverified_tiles(2500, pairs)
    assert time.perf_counter() - t0 < 2.0  # was quadratic: one connected-components pass per pair
    assert not loose.any()
    chain = [(i, i + 1) for i in range(49)]  # one row of tiles: every pair a bridge, every tile unverified
    assert unverified_tiles(50, chain).all()
