"""Channel roles of a sample (nuclear stain, cytoplasm/membrane stain) and whether it carries beads.

Resolved once from the acquisition, by the steps that need them, so that the
step defaults adapt to what was imaged: a configured index wins (and must be a
channel of the sample), ``"auto"`` picks a channel by its name, and a
single-channel sample has no cytoplasm channel (its cells are grown from the
nuclei). Pure Python: the runner checks the configured indices with
:func:`check_channel_indices` before any step runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = [
    "CYTO_NAMES",
    "NUCLEAR_NAMES",
    "ChannelRoles",
    "channel_error",
    "check_channel",
    "check_channel_indices",
    "has_beads",
    "resolve_roles",
]

#: Name fragments (lower case) of nuclear stains: DAPI, Hoechst, DRAQ5, IMC's iridium DNA intercalator, ...
NUCLEAR_NAMES = ("dapi", "hoechst", "nuclear", "nucleus", "nuclei", "nuc", "dna", "draq5", "ir191", "ir193", "syto")
#: Name fragments (lower case) of cytoplasm or membrane stains.
CYTO_NAMES = (
    "cyto",
    "cytoplasm",
    "membrane",
    "memb",
    "cellmask",
    "actin",
    "phalloidin",
    "wga",
    "cadherin",
    "ecad",
    "keratin",
    "panck",
    "eosin",
    "tubulin",
)


def _describe(channels: Sequence[str]) -> str:
    return ", ".join(f"{i} {name!r}" for i, name in enumerate(channels))


def channel_error(key: str, value: object, channels: Sequence[str]) -> ConfigError:
    """``<key>: <value> is not a channel of this sample (channels: 0 'DAPI', ...)``.

    >>> str(channel_error("steps.segment.cyto_channel", 3, ["DAPI"]))
    "steps.segment.cyto_channel: 3 is not a channel of this sample (channels: 0 'DAPI')"
    """
    return ConfigError(f"{key}: {value} is not a channel of this sample (channels: {_describe(channels)})")


def check_channel(key: str, value: int, channels: Sequence[str]) -> int:
    """``value`` if it indexes ``channels``, else :func:`channel_error`."""
    if not 0 <= int(value) < len(channels):
        raise channel_error(key, value, channels)
    return int(value)


def _matches(name: str, fragments: Sequence[str]) -> bool:
    low = name.lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", low) if t]
    return any(f in low for f in fragments if len(f) > 3) or any(t.startswith(f) for t in tokens for f in fragments)


def _by_name(channels: Sequence[str], fragments: Sequence[str], exclude: int | None = None) -> int | None:
    for i, name in enumerate(channels):
        if i != exclude and _matches(name, fragments):
            return i
    return None


@dataclass(frozen=True)
class ChannelRoles:
    """Resolved channel roles of one sample.

    ``cyto`` is ``None`` when the sample has no cytoplasm channel;
    ``grow`` says whether cells are then grown from the nuclei (by distance)
    or are the nuclei themselves. ``source`` says where each role came from
    (``config``, ``name``, ``default``, ``none``).
    """

    nuclear: int
    cyto: int | None
    grow: bool
    source: dict[str, str]

    def cells_from(self, channels: Sequence[str], max_expansion_um: float) -> str:
        """What the cells are, for the catalogue: ``cytoplasm 'CD45' (1)``, ``nuclei (grown 6 µm)``, ``nuclei``."""
        if self.cyto is not None:
            return f"cytoplasm {channels[self.cyto]!r} ({self.cyto})"
        if self.grow and max_expansion_um > 0:
            return f"nuclei (grown {max_expansion_um:g} um)"
        return "nuclei"

    def as_dict(self, channels: Sequence[str]) -> dict[str, Any]:
        return {
            "nuclear": self.nuclear,
            "nuclear_name": channels[self.nuclear],
            "cyto": self.cyto,
            "cyto_name": None if self.cyto is None else channels[self.cyto],
            "source": dict(self.source),
        }


def resolve_roles(
    channels: Sequence[str],
    nuclear: int | str = "auto",
    cyto: int | str | None = "auto",
    *,
    prefix: str = "steps.segment",
) -> ChannelRoles:
    """Nuclear and cytoplasm channels of a sample with these channel names.

    ``"auto"`` picks by name (:data:`NUCLEAR_NAMES`, :data:`CYTO_NAMES`), else
    the historical defaults (nuclear 0, cytoplasm the first other channel);
    a single-channel sample has no cytoplasm channel and grows its cells from
    the nuclei. ``cyto=None`` means no cytoplasm channel: cells are the nuclei.

    >>> r = resolve_roles(["DAPI"])
    >>> r.nuclear, r.cyto, r.grow
    (0, None, True)
    >>> r = resolve_roles(["CD45", "Hoechst 33342"])
    >>> r.nuclear, r.cyto, r.source["nuclear"]
    (1, 0, 'name')
    >>> try:
    ...     resolve_roles(["DAPI"], cyto=3)
    ... except ConfigError as exc:
    ...     print(exc)
    steps.segment.cyto_channel: 3 is not a channel of this sample (channels: 0 'DAPI')
    """
    source: dict[str, str] = {}
    if nuclear == "auto":
        found = _by_name(channels, NUCLEAR_NAMES)
        nuc, source["nuclear"] = (found, "name") if found is not None else (0, "default")
    else:
        nuc, source["nuclear"] = check_channel(f"{prefix}.nuclear_channel", int(nuclear), channels), "config"
    grow = True
    if cyto is None:
        cyt, grow, source["cyto"] = None, False, "none"
    elif cyto == "auto":
        found = _by_name(channels, CYTO_NAMES, exclude=nuc)
        if found is not None:
            cyt, source["cyto"] = found, "name"
        elif len(channels) > 1:
            cyt, source["cyto"] = (1 if nuc != 1 else 0), "default"
        else:
            cyt, source["cyto"] = None, "none"
    else:
        cyt, source["cyto"] = check_channel(f"{prefix}.cyto_channel", int(cyto), channels), "config"
    return ChannelRoles(nuclear=nuc, cyto=cyt, grow=grow, source=source)


def has_beads(acquisition: Any) -> bool:
    """Whether the acquisition carries fiducial beads: ``beads: false`` in ``acquisition.json`` says not,
    and a ``coverslip`` has none unless ``beads: true`` says it has.

    >>> from types import SimpleNamespace
    >>> has_beads(SimpleNamespace()), has_beads(SimpleNamespace(beads=False))
    (True, False)
    >>> has_beads(SimpleNamespace(modality="coverslip")), has_beads(SimpleNamespace(modality="coverslip", beads=True))
    (False, True)
    """
    value = getattr(acquisition, "beads", None)
    if value is None:
        extra = getattr(acquisition, "model_extra", None) or {}
        value = extra.get("beads", getattr(acquisition, "modality", None) != "coverslip")
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "none", "0", "")
    return bool(value)


def check_channel_indices(channels: Sequence[str], steps: Any) -> None:
    """Raise :class:`ConfigError` for a configured channel index that is not a channel of the sample.

    ``steps`` is the run's :class:`~imaxt_pipeline.steps.params.StepsConfig`; only enabled
    steps are checked (beads ``channel``, segment ``nuclear_channel``/``cyto_channel``,
    crops ``ranking_channel``).

    >>> from imaxt_pipeline.steps.params import StepsConfig
    >>> try:
    ...     check_channel_indices(["DAPI"], StepsConfig.model_validate({"crops": {"ranking_channel": 1}}))
    ... except ConfigError as exc:
    ...     print(exc)
    steps.crops.ranking_channel: 1 is not a channel of this sample (channels: 0 'DAPI')
    """
    checks: list[tuple[str, str, Any]] = [
        ("beads", "channel", None),
        ("segment", "nuclear_channel", "auto"),
        ("segment", "cyto_channel", "auto"),
        ("crops", "ranking_channel", None),
    ]
    for step, key, auto in checks:
        params = getattr(steps, step, None)
        if params is None or not params.enabled:
            continue
        value = getattr(params, key, None)
        if value is None or value == auto or isinstance(value, str):
            continue
        check_channel(f"steps.{step}.{key}", int(value), channels)
