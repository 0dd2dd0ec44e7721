"""Figure -> PNG bytes."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


def to_png(figure: Figure, *, dpi: int = 110) -> bytes:
    """PNG bytes of ``figure`` (Agg renderer, tight bounding box)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
