"""QC figures render without pyplot and leave the matplotlib backend alone."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from imaxt_pipeline.qc import StitchPanel, catalogue_histograms, register_figure, segment_overlay, stitch_figure, to_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_qc_figure_has_offset_bands_and_radius_histogram():
    fig = register_figure(np.array([[0, 0], [1, 2.0]]), np.array([[0, 0], [0.1, 0.2]]), np.array([20.0, 21]))
    axes = fig.get_axes()
    assert [a.get_ylabel() for a in axes] == ["Dx (px)", "Dy (px)", "detections"]
    assert len(axes[0].collections) == 1  # the 1-sigma band


def test_every_figure_renders_to_png_without_switching_the_backend():
    import sys

    backend = matplotlib.get_backend()
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), np.uint32)
    labels[10:20, 10:20], labels[30:40, 35:45] = 1, 2
    cells = pd.DataFrame(
        {
            "area_um2": rng.uniform(20, 80, 50),
            "nucleus_area_um2": rng.uniform(5, 20, 50),
            "mean_nuclear": rng.uniform(0, 1, 50),
            "mean_cyto": rng.uniform(0, 1, 50),
        }
    )
    figures = {
        "stitch": stitch_figure(
            [
                StitchPanel(0, rng.random((16, 16)), rng.random((16, 16)), np.array([0.1, 0.2])),
                StitchPanel(1, np.zeros((16, 16)), np.zeros((16, 16)), np.zeros(0)),
            ],
            level=2,
        ),
        "register": register_figure(np.zeros((3, 2)), np.full((3, 2), np.nan), np.array([20.0, np.nan])),
        "overlay": segment_overlay(rng.random((64, 64)), labels, plane=3, region=32),
        "catalogue": catalogue_histograms(cells, ["nuclear", "cyto"]),
        "empty catalogue": catalogue_histograms(cells.iloc[:0], ["nuclear"]),
    }
    for name, fig in figures.items():
        png = to_png(fig)
        assert png.startswith(PNG_MAGIC) and len(png) > 1000, name
    # the region is centred on the labels' median pixel (24, 27)
    assert figures["overlay"].get_axes()[0].get_title() == "nuclear channel, plane 3, y8 x11"
    assert figures["stitch"].get_axes()[2].get_title().startswith("pair residuals: median 0.15 px")
    assert matplotlib.get_backend() == backend
    assert "matplotlib.pyplot" not in sys.modules or not matplotlib.pyplot.get_fignums()


def test_federation_panel_keeps_points_and_a_down_sampled_section_in_level0_cube_px():
    from imaxt_pipeline.qc import federation_figure

    points = np.array([[100.0, 40.0], [700.0, 300.0]])  # (x, y), level-0 cube px
    fig = federation_figure(
        np.array([0, 3, 9, 2]), None, 2, np.ones((100, 200)), points, points + 0.5, np.array([0.2, 0.3]),
        image_scale=4.0,
    )  # fmt: skip
    panel = fig.get_axes()[1]
    left, right, bottom, top = panel.get_images()[0].get_extent()
    assert (left, right, bottom, top) == (-2.0, 798.0, 398.0, -2.0)  # 200 x 100 image px = 800 x 400 cube px
    assert np.allclose(panel.collections[0].get_offsets(), points)  # not divided by the image's scale
    assert "level-0" in panel.get_title()
