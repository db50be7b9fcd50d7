"""``kimap export``: the planning export of a map folder (DICOM Parametric Map, RTSTRUCT, NRRD/NIfTI)."""

from __future__ import annotations

import argparse

from KiMapLib.export.planning import FORMATS, export_planning
from KiMapLib.progress import progress_bar


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``kimap export`` to the CLI."""
    parser = subparsers.add_parser(
        "export", help="export a ki67 map for radiation planning (DICOM PM + RTSTRUCT, NRRD, NIfTI)",
        description="Export the output of 'kimap map' as DICOM Parametric Maps (ki67, probability and, when the "
                    "map has them, the prediction interval's bounds and the out-of-domain score) and an RT "
                    "Structure Set of iso-levels referencing the t1c DICOM series, plus NRRD and NIfTI. "
                    "Research use only.")
    parser.add_argument("--map", required=True, metavar="MAP_DIR", help="output folder of 'kimap map'")
    parser.add_argument("--reference-dicom", required=True, metavar="T1C_DIR",
                        help="folder of the t1c DICOM series the map was computed on")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="export folder (created; an earlier KiMap export there is replaced atomically)")
    parser.add_argument("--level", action="append", metavar="EXPR", default=None,
                        help="iso-level ROI, repeatable: ki67>=PERCENT or prob>=P (default: prob>=0.5 and ki67>=20)")
    parser.add_argument("--formats", default=",".join(FORMATS), metavar="LIST",
                        help="comma-separated subset of dicom,nrrd,nifti (default: all)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kimap export``; KiMapError propagates to the CLI's one-line error handler."""
    with progress_bar("export") as progress:
        result = export_planning(args.map, args.reference_dicom, args.out, levels=args.level,
                                 formats=[f for f in args.formats.split(",") if f.strip()], progress=progress)
    print(f"export written to {result['out_dir']} ({len(result['files'])} files)")
    for kind, entry in result["dicom"].items():
        if kind != "rtstruct":
            print(f"  parametric map {entry['file']}: {entry['SeriesDescription']}")
    for note in result["notes"]:
        print(f"  note: {note}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    for roi in result["rois"]:
        dice_text = f", contour Dice {roi['dice_contours_vs_mask']:.3f}" if "dice_contours_vs_mask" in roi else ""
        print(f"  ROI '{roi['name']}': {roi['voxels']} voxels, {roi['volume_ml']} ml{dice_text}")
    return 0
