"""The processed output store of one sample: generic access to attributes, images, arrays, tables, figures.

Layout (the results contract, ``docs/results-contract.md``; what each step
reads and writes is typed in :mod:`.results`)::

    <out>/zarr.json            root group; attrs["imaxt"] = {"format_version": ..., "stitch": ...,
                               "register": ..., "provenance": [...], "complete": bool}
    <out>/mosaic/              NGFF image (c, z, y, x): stitched slices
    <out>/cube/                NGFF image (c, z, y, x): registered cube (+ labels/)
    <out>/calibration/         flat and stray light arrays
    <out>/crops                nucleus crops (n, c, y, x)
    <out>/tables/<name>.parquet
    <out>/qc/<name>.png

Only the process driving the run (the Dask client) writes root attributes;
workers write array chunks and files of their own.

One sample per output: :func:`claim_output` opens the output of a run only when it is
apart from the raw store (not the same place, not inside it, not around it) and is
empty, or is a store of this runner (``attrs["imaxt"]["owner"]``, :mod:`.ownership`) for
the same sample holding only what the steps write, whose recorded sections were made
from the same raw data (per-section checksums). Nothing is written before these checks.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import zarr

from ..errors import StoreError
from .ome import Mode, OmeImage, create_image, create_labels, open_image
from .ownership import Owner, check_destination, owner_attrs, read_owner, relation, sample_identity
from .provenance import redact
from .urls import Location

#: Version of the results contract (``docs/results-contract.md``) this package writes, kept in
#: ``attrs["imaxt"]["format_version"]``. The major number changes when a reader of an older
#: store would misread it.
FORMAT_VERSION = "1.0"
OUTPUT_TOOL = "imaxt-pipeline run"
"""The ``tool`` recorded as owner of the output stores the runner writes."""

_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's LocalStore writes <key>.<hex>.partial, then renames
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_OUTPUT_KEY = re.compile(
    rf"zarr\.json"
    rf"|(?:calibration|mosaic|confidence|cube|crops)(?:/[A-Za-z0-9_-]+)*(?:/zarr\.json)?"  # groups, arrays, chunks
    rf"|tables(?:/{_NAME}\.parquet(?:\.tmp-[0-9a-f]+)?)?"
    rf"|qc(?:/{_NAME}\.png(?:\.tmp-[0-9a-f]+)?)?"
)


def is_output_key(key: str) -> bool:
    """Whether ``key`` (relative to the output store) is one the steps write (zarr's ``.partial`` files included).

    >>> [is_output_key(k) for k in ("zarr.json", "mosaic/0/c/0/1/2/3", "tables/cells.parquet", "notes.txt")]
    [True, True, True, False]
    """
    return _OUTPUT_KEY.fullmatch(_PARTIAL.sub("", key)) is not None


class OutputStore:
    """Read/write access to a processed sample store.

    Parameters
    ----------
    url : str
        Output store location (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options.
    mode : {"a", "r"}
        ``"a"`` creates the store when missing; ``"r"`` only reads.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, mode: Mode = "a") -> None:
        self.location = Location(url, storage_options)
        self.mode = mode
        self._attrs_store: Any = None
        self.root = zarr.open_group(self.location.zarr_store(read_only=mode == "r"), mode=mode)
        if mode != "r" and "imaxt" not in self.root.attrs:
            self.root.attrs["imaxt"] = {"format_version": FORMAT_VERSION, "provenance": [], "complete": False}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.location.url, self.location.storage_options, self.mode))

    @property
    def url(self) -> str:
        return self.location.url

    # -- root attributes ---------------------------------------------------
    def imaxt_attrs(self) -> dict[str, Any]:
        """A fresh copy of ``attrs["imaxt"]`` as stored (the root's ``zarr.json`` read again)."""
        # one read-only store for every re-read: a new one is a new filesystem client per call, ~0.3 s
        # on S3 (the steps read the attrs a dozen times per run)
        if self._attrs_store is None:
            self._attrs_store = self.location.zarr_store(read_only=True)
        fresh = zarr.open_group(self._attrs_store, mode="r")
        return dict(cast(dict[str, Any], fresh.attrs.get("imaxt", {})))

    def update_imaxt_attrs(self, dotted: str, value: Any) -> None:
        """Set ``attrs["imaxt"][a][b]... = value`` for ``dotted = "a.b..."``."""
        meta = self.imaxt_attrs()
        node = meta
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _jsonable(value)
        self.root.attrs["imaxt"] = meta

    def append_provenance(self, entry: dict[str, Any]) -> int:
        """Append one provenance entry; return its index (for :meth:`set_provenance`)."""
        meta = self.imaxt_attrs()
        meta["provenance"] = [*meta.get("provenance", []), redact(_jsonable(entry))]
        self.root.attrs["imaxt"] = meta
        return len(meta["provenance"]) - 1

    def set_provenance(self, index: int, entry: dict[str, Any]) -> None:
        """Replace provenance entry ``index`` (an entry appended when its step started)."""
        meta = self.imaxt_attrs()
        entries = list(meta.get("provenance", []))
        entries[index] = redact(_jsonable(entry))
        meta["provenance"] = entries
        self.root.attrs["imaxt"] = meta

    def owner(self) -> Owner | None:
        """The ownership record (``attrs["imaxt"]["owner"]``), if any."""
        return read_owner({"imaxt": self.imaxt_attrs()})

    def record_owner(self, owner: Owner) -> None:
        self.root.attrs["imaxt"] = owner_attrs(self.imaxt_attrs(), owner)

    # -- images ------------------------------------------------------------
    def create_image(
        self,
        name: str,
        *,
        channel_names: Sequence[str],
        shape_czyx: Sequence[int],
        scale_zyx_um: Sequence[float],
        dtype: str = "uint16",
        levels: int = 3,
        chunks_yx: tuple[int, int] = (512, 512),
        window: tuple[float, float] | None = None,
        shard_yx: int | None = None,
    ) -> OmeImage:
        return create_image(
            self.location,
            name,
            shape_czyx=shape_czyx,
            scale_zyx_um=scale_zyx_um,
            channel_names=channel_names,
            dtype=dtype,
            levels=levels,
            chunks_yx=chunks_yx,
            window=window,
            shard_yx=shard_yx,
        )

    def open_image(self, name: str) -> OmeImage:
        return open_image(self.location, name)

    def has(self, path: str) -> bool:
        return self.location.exists(path, "zarr.json")

    def create_labels(self, image_name: str, label_name: str, *, dtype: str = "uint32") -> OmeImage:
        return create_labels(self.open_image(image_name), label_name, dtype=dtype)

    # -- plain arrays --------------------------------------------------------
    def create_array(
        self,
        path: str,
        *,
        shape: Sequence[int],
        chunks: Sequence[int],
        dtype: str,
        dimension_names: Sequence[str] | None = None,
    ) -> zarr.Array[Any]:
        """Create (or overwrite) the array ``path`` (parent groups made as needed), filled with 0."""
        parent, _, name = path.rpartition("/")
        group = self.root.require_group(parent) if parent else self.root
        return group.create_array(
            name,
            shape=tuple(shape),
            chunks=tuple(chunks),
            dtype=dtype,
            fill_value=0,
            overwrite=True,
            dimension_names=tuple(dimension_names) if dimension_names else None,
        )

    def open_array(self, path: str) -> zarr.Array[Any]:
        """The existing array ``path``, writable unless the store was opened with ``mode="r"``."""
        node = zarr.open_group(self.location.zarr_store(read_only=self.mode == "r"), mode=self.mode)[path]
        if not isinstance(node, zarr.Array):
            raise TypeError(f"{self.url}: {path} is a group, not an array")
        return node

    # -- tables and figures -------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write ``tables/<name>.parquet`` atomically; return its path in the store."""
        rel = f"tables/{name}.parquet"
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self._write_bytes(rel, buf.getvalue())
        return rel

    def read_table(self, name: str) -> pd.DataFrame:
        with self.location.fs.open(self.location.path(f"tables/{name}.parquet"), "rb") as fh:
            return pd.read_parquet(fh)

    def has_table(self, name: str) -> bool:
        return self.location.exists(f"tables/{name}.parquet")

    def write_png(self, name: str, png: bytes) -> str:
        """Store PNG bytes (:func:`imaxt_pipeline.qc.to_png` renders a figure) as ``qc/<name>.png``."""
        rel = f"qc/{name}.png"
        self._write_bytes(rel, bytes(png))
        return rel

    def _write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` so that readers never see a partial file.

        On an object store one PUT is atomic already: a single ``pipe_file``, not an upload
        to a temporary key plus a server-side copy and delete (twice the traffic). On a
        local disk: a temporary file next to the target, then a rename.
        """
        fs, final = self.location.fs, self.location.path(rel)
        if not self.location.is_local:
            fs.pipe_file(final, data)
            return
        tmp = f"{final}.tmp-{np.random.default_rng().integers(1 << 62):x}"
        fs.makedirs(self.location.path(rel.rsplit("/", 1)[0]), exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, final)


def claim_output(
    url: str,
    storage_options: dict[str, Any] | None,
    *,
    source: Location,
    sample: str,
    sample_id: str,
    sections: Mapping[str, str],
    processing: Sequence[int],
) -> OutputStore:
    """Open the output of a run of one sample, after checking it may be written; record its owner.

    Parameters
    ----------
    url, storage_options
        The output store.
    source : Location
        The raw store the run reads.
    sample, sample_id : str
        The sample's name and identity (:func:`.ownership.sample_identity` of its acquisition).
    sections : mapping
        ``{"<slice>": sha256}`` of the raw store, every section (:func:`.ownership.section_checksums`).
    processing : sequence of int
        Sections this run processes: their checksums are recorded before any step writes.

    Raises
    ------
    StoreError
        One line, nothing written: the output is the raw store, inside or around it, a file,
        holds files the steps do not write, is another tool's store or another sample's output,
        or holds sections processed from different raw data.
    """
    loc = Location(url, storage_options)
    rel = relation(loc, source)
    if rel is not None:
        where = {
            "the same as": "is the input store",
            "inside": "is inside the input store",
            "around": "contains the input store",
        }[rel]
        raise StoreError(f"{loc.url}: output {where} {source.url}; choose an output outside it")
    found = check_destination(
        loc, tool=OUTPUT_TOOL, sample=sample, sample_id=sample_id, owns=is_output_key, adopt=_adopt_legacy
    )
    version = (found.attrs.get("imaxt") or {}).get("format_version")
    if version is not None and str(version).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise StoreError(
            f"{loc.url}: results format {version}, this version of imaxt-pipeline writes {FORMAT_VERSION}; "
            f"write to a new output store"
        )
    recorded = found.owner.sections if found.owner is not None else {}
    changed = sorted((s for s in recorded if sections.get(s) != recorded[s]), key=int)
    if changed:
        raise StoreError(
            f"{loc.url}: section{'s' if len(changed) > 1 else ''} {', '.join(changed)} of this output "
            f"{'were' if len(changed) > 1 else 'was'} processed from different raw data than {source.url} holds "
            f"now (section checksums differ); choose a new output"
        )
    store = OutputStore(url, storage_options)
    new = {str(s): sections[str(s)] for s in processing if str(s) in sections}
    owner = Owner(OUTPUT_TOOL, sample, sample_id, {**recorded, **new})
    if store.owner() != owner:
        store.record_owner(owner)
    return store


def _adopt_legacy(attrs: Mapping[str, Any]) -> Owner | None:
    """Recognise an output written before ownership was recorded (``imaxt.provenance`` and ``imaxt.acquisition``).

    Its sections are unknown (none recorded), so only the sample identity is checked.
    """
    meta = attrs.get("imaxt")
    if not isinstance(meta, Mapping) or "provenance" not in meta or "upload" in meta:
        return None
    acq = meta.get("acquisition")
    if not isinstance(acq, Mapping) or not isinstance(acq.get("sample"), str):
        return None
    try:
        identity = sample_identity(dict(acq))
    except (TypeError, ValueError):
        return None
    return Owner(OUTPUT_TOOL, acq["sample"], identity)


def _reopen(url: str, storage_options: dict[str, Any], mode: Mode) -> OutputStore:
    return OutputStore(url, storage_options, mode=mode)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so zarr's JSON attrs accept them."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
