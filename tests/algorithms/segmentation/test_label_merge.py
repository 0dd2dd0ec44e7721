"""IoU matching, union-find relabelling and blockwise segmentation across block boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.segmentation import (
    CellGrowth,
    LabelMatch,
    WatershedSegmenter,
    match_labels,
    merge_tables,
    object_f1,
)
from imaxt_pipeline.algorithms.segmentation._label_merge import iou_pairs
from imaxt_pipeline.parallel.segmentation import block_grid, segment_blockwise
from imaxt_pipeline.testing._segdata import two_channel_sample


def _brute_iou(a, b, la, lb):
    ma, mb = a == la, b == lb
    return (ma & mb).sum() / (ma | mb).sum()


def test_iou_pairs_equal_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (40, 30))
    b = rng.integers(0, 4, (40, 30))
    la, lb, iou = iou_pairs(a, b)
    assert len(la) == 4 * 3  # every non-zero pair overlaps somewhere in random labels
    for x, y, v in zip(la, lb, iou, strict=True):
        assert v == pytest.approx(_brute_iou(a, b, x, y))


def test_match_labels_recovers_a_permutation():
    _, nuclei, _ = two_channel_sample((96, 96), seed=1)
    perm = np.random.default_rng(2).permutation(nuclei.max() + 1)
    perm[perm == 0] = perm[0]
    perm[0] = 0
    m = match_labels(nuclei, perm[nuclei], min_iou=0.5)
    assert len(m) == nuclei.max()
    np.testing.assert_array_equal(perm[m.a], m.b)
    np.testing.assert_allclose(m.iou, 1.0)


def test_object_f1_counts_missing_and_extra_objects():
    _, nuclei, _ = two_channel_sample((128, 128), seed=3)
    pred = nuclei.copy()
    pred[np.isin(pred, [1, 2, 3])] = 0  # three misses
    pred[:3, :3] = nuclei.max() + 10  # one false positive (corner, outside truth objects or cutting one)
    score = object_f1(nuclei, pred)
    n = len(np.unique(nuclei)) - 1
    assert score.false_negatives >= 3 and score.false_positives >= 1
    assert score.true_positives + score.false_negatives == n
    assert score.f1 == pytest.approx(
        2 * score.true_positives / (2 * score.true_positives + score.false_positives + score.false_negatives)
    )
    assert object_f1(nuclei, nuclei).f1 == 1.0


def test_merge_tables_joins_chains_and_numbers_consecutively():
    # block 0 labels 1..3, block 1 labels 1..2, block 2 labels 1..2
    matches = [
        (0, 1, LabelMatch(np.array([3]), np.array([1]), np.array([0.9]))),
        (1, 2, LabelMatch(np.array([1]), np.array([2]), np.array([0.8]))),
    ]
    tables = merge_tables([3, 2, 2], matches)
    assert tables[0][3] == tables[1][1] == tables[2][2]
    everything = np.concatenate([t[1:] for t in tables])
    assert sorted(set(everything.tolist())) == list(range(1, 6))  # 7 local labels, 2 merges
    assert all(t[0] == 0 for t in tables)


def test_merge_tables_skips_labels_absent_from_cores():
    tables = merge_tables([2, 2], [], present=[np.array([0, 2]), np.array([1, 2])])
    assert tables[0][2] == 1 and tables[1][1] == 2 and tables[1][2] == 3
    assert tables[0][1] == 0


def test_merge_tables_rejects_out_of_range_matches():
    with pytest.raises(ValueError, match="outside the block label ranges"):
        merge_tables([1, 1], [(0, 1, LabelMatch(np.array([2]), np.array([1]), np.array([1.0])))])


def test_block_grid_covers_plane_once():
    grid = block_grid((130, 257), block=64, overlap=20)
    cover = np.zeros((130, 257), int)
    for y0, y1, x0, x1 in grid.cores:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert grid.grid == (3, 5)
    for (cy0, _, _, cx1), (wy0, _, _, wx1) in zip(grid.cores, grid.windows, strict=True):
        assert wy0 == max(0, cy0 - 20) and wx1 == min(257, cx1 + 20)


def _disk_image(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 0.05, np.float32)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[inside] = 1.0
        truth[inside] = i
    cyto = np.full(shape, 0.05, np.float32)
    return np.stack([img, cyto]), truth


def test_object_straddling_block_corner_gets_one_label(dask_client):
    # nuclei centred on a core boundary, on a 4-block corner, and one well inside a block
    image, truth = _disk_image((128, 128), [(64, 30), (64, 64), (20, 100)], radius=6)
    seg = WatershedSegmenter(diameter=12, cyto_channel=None, nuclear_threshold=0.5)
    lab = segment_blockwise(image, seg, block=64, overlap=24).compute()
    nuclei = lab[0]
    assert len(np.unique(nuclei[nuclei > 0])) == 3
    for i in (1, 2, 3):
        inside = nuclei[truth == i]
        assert len(np.unique(inside[inside > 0])) == 1  # one label over the whole object
        assert (inside > 0).mean() > 0.9
    whole = seg.segment(image).nuclei
    assert object_f1(whole, nuclei, min_iou=0.5).mean_iou == 1.0  # identical to segmenting in one piece
    # each block alone would have cut the boundary objects into pieces
    piece = seg.segment(image[:, :64, :64]).nuclei
    assert (piece > 0).sum() < (truth == 2).sum()


def test_blockwise_equals_whole_image_on_uneven_blocks(dask_client):
    image, truth, _ = two_channel_sample((200, 230), seed=5)
    seg = WatershedSegmenter(nuclear_threshold=0.4, growth=CellGrowth(threshold=0.25))
    whole = seg.segment(image)
    lab = segment_blockwise(image, seg, block=(70, 90)).compute()
    for k, ref in enumerate((whole.nuclei, whole.cells)):
        got = lab[k]
        assert len(np.unique(got[got > 0])) == got.max()  # consecutive 1..N
        score = object_f1(ref, got, min_iou=0.5)
        assert score.f1 > 0.97, score
    nz = lab[0] > 0
    np.testing.assert_array_equal(lab[1][nz], lab[0][nz])  # a cell carries its nucleus's label


def test_overlap_below_twice_the_diameter_is_rejected():
    with pytest.raises(ValueError, match="below 2 x expected diameter"):
        segment_blockwise(np.zeros((2, 64, 64), np.float32), WatershedSegmenter(diameter=10), block=32, overlap=10)


def test_gpu_tasks_run_only_on_gpu_workers():
    from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream

    image, _, _ = two_channel_sample((160, 160), seed=7)
    seg = WatershedSegmenter(nuclear_threshold=0.4, growth=CellGrowth(threshold=0.25))
    lab = segment_blockwise(image, seg, block=64, gpu_resource=True)
    workers = {
        "gpu": {
            "cls": Nanny,
            "options": {"nthreads": 1, "resources": {"GPU": 1}, "memory_limit": "1GiB", "dashboard": False},
        },
        "cpu": {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": "1GiB", "dashboard": False}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}  # None would mean port 8787
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        gpu_addr = [a for a, w in client.scheduler_info()["workers"].items() if w["resources"].get("GPU")]
        with get_task_stream(client) as ts:
            result = client.compute(lab, optimize_graph=False).result()  # as the segment step does
    seg_tasks = [t for t in ts.data if str(t["key"]).startswith("segment-block-")]
    assert len(seg_tasks) == 9
    assert {t["worker"] for t in seg_tasks} == set(gpu_addr)
    assert result[0].max() > 50
