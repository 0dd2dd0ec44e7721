"""Old module paths, kept importable for one release (0.2) with a ``DeprecationWarning``.

Version 0.1 had flat modules (``imaxt_pipeline.algorithms.overlap``, ``imaxt_pipeline.models``,
...). They moved into concern packages; notebooks written against 0.1 keep working because this
finder answers an old name with the new module, after warning which path to use instead.
Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old dotted path (below ``imaxt_pipeline.``) -> where it lives now
MOVED: dict[str, str] = {
    "models": "acquisition",
    "demo": "workflows.demo",
    "calibration_acquisition": "workflows.calibration_acquisition",
    "algorithms.distortion": "algorithms.optics._distortion",
    "algorithms.mosaic": "algorithms.optics._geometry",
    "algorithms.seams": "algorithms.calibration._seams",
    "algorithms.flatfield": "algorithms.calibration._flatfield",
    "algorithms.flat_refine": "algorithms.calibration._flat_refine",
    "algorithms.distortion_fit": "algorithms.calibration._distortion_fit",
    "algorithms.overlap": "algorithms.stitching._overlap",
    "algorithms.subpixel": "algorithms.stitching._subpixel",
    "algorithms.positions": "algorithms.stitching._positions",
    "algorithms.beads": "algorithms.registration._beads",
    "algorithms.bead_fit": "algorithms.registration._bead_fit",
    "algorithms.bead_unet": "algorithms.registration._bead_unet",
    "algorithms.tracks": "algorithms.registration._tracks",
    "algorithms.slice_registration": "algorithms.registration._slice_offsets",
    "algorithms.segmentation_cellpose": "algorithms.segmentation._cellpose",
    "algorithms.label_merge": "algorithms.segmentation._label_merge",
    "algorithms.features": "algorithms.measure._features",
    "algorithms.crops": "algorithms.measure._crops",
    "parallel.stitch": "parallel.stitching",
    "parallel.beads": "parallel.registration",
    "parallel.cube": "parallel.registration",
}
_PREFIX = "imaxt_pipeline."


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old path goes away in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # before the import machinery overwrites it (see exec_module)
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed: give it back its own spec.

        The import machinery sets ``__spec__`` to the old name's spec on the module ``create_module``
        returned; its parent (the old package) would then disagree with ``__package__``, and every later
        relative import inside the module's functions would warn (``__package__ != __spec__.parent``).
        """
        module.__spec__ = self.spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(_PREFIX)
        new = MOVED.get(old)
        # Paths that are still real modules or packages (e.g. `algorithms.fusion`) resolve normally.
        if not fullname.startswith(_PREFIX) or new is None or new == old:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(_PREFIX + new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
