"""``imaxt`` sub-commands ``calibrate-distortion`` (a calibration file from a high-overlap acquisition) and
``register-modality`` (a slide or IMC acquisition onto an STPT cube), each an ``add_<name>`` parser and its
handler (for :mod:`.cli`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ._cli_options import (
    SubParsers,
    _add_storage,
)


def add_calibrate_distortion(sub: SubParsers) -> None:
    p = sub.add_parser(
        "calibrate-distortion",
        help="dark, flat, trim and distortion (± sigma) from a high-overlap calibration acquisition",
    )
    p.add_argument("raw_dir", help="raw sample folder (spec/raw-layout.md) of the calibration acquisition")
    p.add_argument("out", help="calibration file to write (.npz, read by the calibrate step)")
    p.add_argument(
        "--stage-sigma-px",
        type=float,
        required=True,
        help="stated stage accuracy, px (1 sigma per axis): the ruler of the magnification",
    )
    p.add_argument("--diagonal", action="store_true", help="also match diagonal neighbours")
    p.add_argument("--max-shift", type=int, default=15, help="search radius around the stage prediction, px")
    p.add_argument(
        "--block",
        type=int,
        default=16,
        help="block size of the correspondences, px (block averaging biases mag by ~1.3 k (B / W)**2)",
    )
    p.add_argument("--max-tiles", type=int, default=64, help="tiles sampled for the dark/flat estimate")
    p.add_argument(
        "--distortion-only",
        action="store_true",
        help="write only the distortion (each sample's calibrate step then estimates dark and flat)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing calibration file at OUT")
    p.add_argument(
        "--seam-acquisition",
        metavar="RAW",
        help="raw folder of a seam acquisition (same optics, the production overlap, a precise stage): the bias "
        "every seam carries, measured after the distortion fit and written into the file (format 5)",
    )
    _add_storage(p)
    p.set_defaults(handler=_calibrate_distortion)


def _calibrate_distortion(args: argparse.Namespace) -> int:
    from ..errors import InputError

    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")
    if not args.stage_sigma_px > 0:
        raise ConfigError(f"--stage-sigma-px must be > 0, got {args.stage_sigma_px}")
    from ..io.calibration_file import write_calibration_file
    from ..workflows.calibration_acquisition import calibrate_from_acquisition, measure_seam_acquisition

    cal, fit = calibrate_from_acquisition(
        args.raw_dir,
        storage_options=args.storage_options,
        stage_sigma_px=args.stage_sigma_px,
        diagonal=args.diagonal,
        max_shift=args.max_shift,
        block_size=args.block,
        max_tiles=args.max_tiles,
    )
    seam = None
    if getattr(args, "seam_acquisition", None):
        seam = measure_seam_acquisition(
            args.seam_acquisition,
            fit.model,
            tile_shape=_tile_shape(args.raw_dir, args.storage_options),
            storage_options=args.storage_options,
            max_shift=args.max_shift,
        )
    write_calibration_file(out, cal, fit, distortion_only=args.distortion_only, overwrite=args.overwrite, seam=seam)
    if not args.distortion_only:
        print(
            f"dark {[round(float(d), 2) for d in cal.dark]} ({cal.source.get('dark')}), "
            f"trim {tuple(cal.trim.as_dict().values())} (top, bottom, left, right), flat from the data"
        )
    print(fit.describe())
    if seam is not None:
        sy, sx = seam.seam_sigma()
        print(
            f"seam bias from {seam.n_pairs[0]} horizontal and {seam.n_pairs[1]} vertical pairs at "
            f"{seam.overlap_px[0]:.0f} / {seam.overlap_px[1]:.0f} px overlap: mean across the seams "
            f"{seam.profile[0, :, 0].mean():+.3f} ± {sy:.3f} (horizontal, y), {seam.profile[1, :, 1].mean():+.3f} "
            f"± {sx:.3f} px (vertical, x)"
        )
    print(f"wrote {out}")
    return 0


def _tile_shape(raw_dir: str, storage_options: dict | None) -> tuple[int, int]:
    """The detector tile shape of a raw acquisition."""
    from ..io.raw import read_raw_sample

    shape = read_raw_sample(raw_dir, storage_options=storage_options).acquisition.tile_shape
    return int(shape[0]), int(shape[1])


def add_register_modality(sub: SubParsers) -> None:
    p = sub.add_parser(
        "register-modality", help="register a slide-scanner slide or IMC acquisition onto an STPT cube by its beads"
    )
    p.add_argument(
        "slide",
        help="slide file: .czi, IMC .txt/.mcd, OME-TIFF or plain TIFF (with --pixel-size-um); "
        "with --refresh, a slide store written by this command",
    )
    p.add_argument("--reference", help="processed STPT store (cube, beads, register); required unless --refresh")
    p.add_argument(
        "--out",
        help="the slide's OME-Zarr store to write; a file of several scenes/ROIs writes one store per section, "
        "OUT with -sceneK / -roiK before .zarr (slide.zarr -> slide-scene0.zarr, slide-scene1.zarr, ...)",
    )
    p.add_argument("--via", help="registered Axioscan store to chain an IMC acquisition through")
    p.add_argument("--scene", type=int, help="CZI scene (0-based): register only this one (into OUT)")
    p.add_argument("--roi", type=int, help="MCD acquisition (0-based): register only this one (into OUT)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="SLIDE is a registered slide store: follow its reference cube if re-made (moved by the change in "
        "padding/offset) or mark the mapping stale",
    )
    p.add_argument("--pixel-size-um", type=float, help="slide pixel size (a plain TIFF records none)")
    _add_storage(p)
    p.set_defaults(handler=_register_modality)


def _register_modality(args: argparse.Namespace) -> int:
    from ..workflows import federate

    if args.refresh:
        state, fed = federate.refresh_mapping(args.slide, storage_options=args.storage_options)
        print(federate.describe_refresh(args.slide, state, fed))
        return 1 if state == "stale" else 0
    if not args.reference or not args.out:
        raise ConfigError("register-modality: --reference and --out are required (unless --refresh)")
    outcomes = federate.register_sections(
        args.slide,
        args.reference,
        args.out,
        via=args.via,
        scene=args.scene,
        roi=args.roi,
        pixel_size_um=args.pixel_size_um,
        storage_options=args.storage_options,
    )
    for o in outcomes:
        if o.error is None:
            print(federate.describe_outcome(args.slide, o))
    error = federate.sections_error(args.slide, outcomes)
    if error is not None:
        raise error
    return 0
