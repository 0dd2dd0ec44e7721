"""A plain-text report of what a reader found (``imaxt inspect``)."""

from __future__ import annotations

from ._base import SourceSample

MAX_LISTED = 10
"""Missing tiles listed by key; the rest are counted."""


def describe(sample: SourceSample) -> str:
    """What ``sample`` holds and what looked suspicious, one fact a line.

    Examples
    --------
    ::

        print(describe(open_acquisition("scan/")))
        # format: tissuecyte
        # ...
    """
    acq, d = sample.acquisition, sample.details
    planned = acq.slices * acq.optical_sections * len(acq.channels) * acq.n_tiles
    pixel_from = f" (from {d['pixel_size_from']})" if d.get("pixel_size_from") else ""
    lines = [
        f"source: {sample.root}",
        f"format: {sample.format}",
        f"sample: {acq.sample} ({acq.modality})",
        f"sections: {acq.slices}" + (f" (folders {_numbers(d['sections'])})" if d.get("sections") else ""),
        f"grid: {acq.rows} rows x {acq.cols} cols of {acq.tile_shape[0]} x {acq.tile_shape[1]} px tiles, "
        f"overlap {acq.overlap:.1%}",
        f"channels: {len(acq.channels)} ({', '.join(acq.channels)})",
        f"optical layers: {acq.optical_sections}",
        f"pixel size: {acq.pixel_size_um:g} µm{pixel_from}",
        f"section thickness: {acq.slice_thickness_um:g} µm",
        f"tile images: {len(sample.records)} of {planned} planned",
    ]
    if d.get("orientation"):
        lines.append(f"tile orientation: {d['orientation']}")
    if d.get("stage_step_um"):
        step = ", ".join("-" if v is None else f"{v:g}" for v in d["stage_step_um"])
        lines.append(f"stage step (rows, cols): {step} µm")
    if d.get("requested_sections") is not None:
        lines.append(f"requested sections: {d['requested_sections']}")
    if "trigger_files" in d:
        lines.append(f"trigger files: {d['trigger_files']}")
    missing = sample.missing_tiles
    lines.append(f"missing tiles: {len(missing)}" + (" (slice/z/channel/tile)" if missing else ""))
    lines += [f"  {key}" for key in missing[:MAX_LISTED]]
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    lines.append(f"suspicious: {len(sample.notes) or 'nothing'}")
    lines += [f"  {note}" for note in sample.notes]
    return "\n".join(lines)


def _numbers(values: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"0001-0003, 0005"``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"{r[0]:04d}" if len(r) == 1 else f"{r[0]:04d}-{r[-1]:04d}" for r in runs)
