"""Old 0.1 module paths import for one release, warning with the new path."""

from __future__ import annotations

import importlib
import sys

import pytest

from imaxt_pipeline._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_imports_the_new_module_with_a_warning(old, monkeypatch):
    monkeypatch.delitem(sys.modules, f"imaxt_pipeline.{old}", raising=False)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(f"imaxt_pipeline.{old}")
    assert module is importlib.import_module(f"imaxt_pipeline.{MOVED[old]}")
    # the module keeps its own spec, so relative imports inside its functions resolve without warning
    assert module.__spec__.name == f"imaxt_pipeline.{MOVED[old]}"
    assert module.__spec__.parent == module.__package__


def test_old_names_are_reachable(monkeypatch):
    # Earlier tests may have imported them already: a fresh import is what warns.
    monkeypatch.delitem(sys.modules, "imaxt_pipeline.algorithms.overlap", raising=False)
    monkeypatch.delitem(sys.modules, "imaxt_pipeline.models", raising=False)
    with pytest.warns(DeprecationWarning):
        from imaxt_pipeline.algorithms.overlap import match_pair  # noqa: F401
    with pytest.warns(DeprecationWarning):
        from imaxt_pipeline.models import Acquisition  # noqa: F401
