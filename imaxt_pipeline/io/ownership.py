"""Who wrote a store: a tool writes only into an empty place or into a store it wrote itself.

A store written by this package records its owner in the root attributes
(``attrs["imaxt"]["owner"]``): the tool that wrote it, the sample's name and
identity (a hash of its acquisition metadata) and one checksum per section. Before
writing, a tool calls :func:`check_apart` (the destination is neither the source, nor
inside it, nor around it) and :func:`check_destination` (the destination is empty, or
a store of this tool for this sample that holds nothing else). Nothing outside what a
tool wrote is ever changed or deleted.

The uploader (:mod:`.upload`) uses these for raw stores; the output store can use the
same functions with its own tool name and key pattern.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from .urls import Location

ROOT_METADATA = "zarr.json"


@dataclass(frozen=True)
class Owner:
    """The ownership record of a store.

    Parameters
    ----------
    tool : str
        What wrote the store, e.g. ``"imaxt-pipeline upload"``.
    sample : str
        Sample name.
    sample_id : str
        :func:`sample_identity` of the sample's acquisition metadata.
    sections : dict
        ``{"<slice>": sha256}``: one checksum per section written and verified so far
        (see :func:`section_checksums`); empty while an upload is incomplete.
    """

    tool: str
    sample: str
    sample_id: str
    sections: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "sample": self.sample,
            "sample_id": self.sample_id,
            "sections": dict(sorted(self.sections.items(), key=lambda kv: int(kv[0]))),
        }

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        """Parse a stored record; ``None`` when it is missing or malformed."""
        if not isinstance(data, Mapping):
            return None
        tool, sample, sample_id = data.get("tool"), data.get("sample"), data.get("sample_id")
        sections = data.get("sections") or {}
        if not (isinstance(tool, str) and isinstance(sample, str) and isinstance(sample_id, str)):
            return None
        if not isinstance(sections, Mapping):
            return None
        return cls(
            tool=tool, sample=sample, sample_id=sample_id, sections={str(k): str(v) for k, v in sections.items()}
        )


def sample_identity(acquisition: Mapping[str, Any]) -> str:
    """Identity of a sample: SHA-256 of its acquisition metadata as canonical JSON.

    Every field of ``acquisition.json`` (as normalised by the model, the sample name
    among them) takes part, so two acquisitions that differ in any way are different
    samples.
    """
    text = json.dumps(acquisition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def section_checksums(tile_sha256: Mapping[str, str]) -> dict[str, str]:
    """One checksum per section from a ``{"slice/z/channel/tile": sha256}`` table."""
    by_slice: dict[str, list[str]] = {}
    for key in sorted(tile_sha256):
        by_slice.setdefault(key.split("/", 1)[0], []).append(f"{key} {tile_sha256[key]}\n")
    return {
        s: hashlib.sha256("".join(lines).encode()).hexdigest()
        for s, lines in sorted(by_slice.items(), key=lambda kv: int(kv[0]))
    }


# -- where: the same place, inside, around --------------------------------------
def _canonical(loc: Location) -> tuple[frozenset[str], str]:
    proto = loc.fs.protocol
    protos = frozenset((proto,) if isinstance(proto, str) else proto)
    if loc.is_local:
        return frozenset({"file"}), os.path.realpath(loc.root)
    return protos, posixpath.normpath("/" + loc.root.strip("/"))


def relation(a: Location, b: Location) -> str | None:
    """How ``a`` lies relative to ``b``: ``"the same as"``, ``"inside"``, ``"around"`` or ``None``.

    Local paths are compared after resolving symbolic links; URLs of one protocol
    (e.g. ``s3://``) by bucket and key, whatever the endpoint, which errs on the safe side.
    """
    protos_a, pa = _canonical(a)
    protos_b, pb = _canonical(b)
    if not protos_a & protos_b:
        return None
    if pa == pb:
        return "the same as"
    if _within(pa, pb):
        return "inside"
    if _within(pb, pa):
        return "around"
    return None


def _within(child: str, parent: str) -> bool:
    return child.startswith(parent.rstrip("/") + "/")


def check_apart(dest: Location, source: Location, *, what: str = "destination") -> None:
    """Refuse a destination that is the source, inside it or contains it.

    Raises
    ------
    StoreError
        One line naming both places.
    """
    rel = relation(dest, source)
    if rel is not None:
        where = {
            "the same as": "is the source folder",
            "inside": "is inside the source folder",
            "around": "contains the source folder",
        }[rel]
        raise StoreError(f"{dest.url}: {what} {where} {source.url}; choose a {what} outside it")


# -- what: empty, or ours ---------------------------------------------------------
def read_root_attributes(loc: Location) -> dict[str, Any] | None:
    """Attributes of the Zarr group at ``loc`` read from its ``zarr.json``; ``None`` if there is none."""
    try:
        raw = loc.fs.cat_file(loc.path(ROOT_METADATA))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def read_owner(attrs: Mapping[str, Any] | None) -> Owner | None:
    """The ownership record in a store's root attributes, if any."""
    imaxt = (attrs or {}).get("imaxt")
    return Owner.from_json(imaxt.get("owner")) if isinstance(imaxt, Mapping) else None


def owner_attrs(meta: Mapping[str, Any], owner: Owner) -> dict[str, Any]:
    """A copy of ``attrs["imaxt"]`` with ``owner`` recorded."""
    return {**meta, "owner": owner.to_json()}


@dataclass
class Destination:
    """What :func:`check_destination` found: nothing, or a store of ours.

    ``owner`` is ``None`` when the destination is empty; ``keys`` lists every entry
    (files and folders, relative to the destination) found in a store of ours.
    """

    location: Location
    owner: Owner | None
    attrs: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.owner is None


def check_destination(
    dest: Location,
    *,
    tool: str,
    sample: str,
    sample_id: str,
    owns: Callable[[str], bool],
    adopt: Callable[[Mapping[str, Any]], Owner | None] | None = None,
) -> Destination:
    """Check that ``dest`` is empty or a store that ``tool`` wrote for this sample.

    Only reads. A store of ours may still be incomplete (an interrupted write) or
    hold fewer sections than the sample (sections landing later): either is
    accepted, so the writer can resume.

    Parameters
    ----------
    dest : Location
        The destination folder or prefix.
    tool, sample, sample_id : str
        The writer and the sample it is about to write (see :class:`Owner`).
    owns : callable
        ``owns(key) -> bool`` for every key (relative path) ``tool`` may have written.
    adopt : callable, optional
        ``adopt(attrs) -> Owner`` recognising stores written before ownership was
        recorded (from their root attributes); ``None`` when not one.

    Raises
    ------
    StoreError
        One line: the destination is a file, holds something ``tool`` did not write,
        or holds another sample.
    """
    fs, root = dest.fs, dest.root
    fs.invalidate_cache()
    if fs.isfile(root):
        raise StoreError(f"{dest.url}: destination is an existing file; choose a new or empty folder")
    try:
        top = fs.ls(root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        top = []
    top = [p for p in top if _relative(p, root)]
    if not top:
        return Destination(dest, None)
    attrs = read_root_attributes(dest)
    owner = read_owner(attrs)
    if owner is None and attrs is not None and adopt is not None:
        owner = adopt(attrs)
    if owner is None:
        example = sorted(_relative(p, root) for p in top)[0]
        raise StoreError(
            f"{dest.url}: destination is not empty and is not a store written by {tool} "
            f"(it holds {example!r}); choose a new or empty destination"
        )
    if owner.tool != tool:
        raise StoreError(
            f"{dest.url}: destination is a store written by {owner.tool!r}, not by {tool}; choose another destination"
        )
    keys = tuple(sorted(_relative(p, root) for p in fs.find(root, withdirs=True)))
    foreign = [k for k in keys if k and not owns(k)]
    if foreign:
        raise StoreError(
            f"{dest.url}: destination holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
            f"that {tool} did not write (e.g. {foreign[0]!r}); move them away or choose another "
            f"destination"
        )
    if owner.sample_id != sample_id:
        same_name = " of the same name" if owner.sample == sample else ""
        raise StoreError(
            f"{dest.url}: store already holds a different sample{same_name} ({owner.sample!r}); "
            f"choose another destination"
        )
    return Destination(dest, owner, attrs or {}, tuple(k for k in keys if k))


def _relative(path: str, root: str) -> str:
    path, root = path.rstrip("/"), root.rstrip("/")
    if path == root:
        return ""
    return path[len(root) + 1 :] if path.startswith(root + "/") else path
