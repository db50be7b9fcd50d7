"""``kimap segment``: the automatic tumour segmentation of one case, its QC picture and QC numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.images import parse_volume_args, read_volumes
from KiMapLib.outputs import check_output_folder
from KiMapLib.progress import progress_bar

#: Exit status when the proposal was written for review but failed its plausibility checks.
IMPLAUSIBLE_EXIT = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="automatic tumour segmentation (BraTS labels) with a QC picture",
        description="Segment the tumour from whatever of t1, t1c, t2 and flair is given: labels 1 necrotic core, "
                    "2 oedema / non-enhancing tumour, 3 enhancing tumour, on the exact t1c grid. Writes "
                    "tumour_labels.nrrd, region_qc.png (contours on FLAIR and t1c) and region_qc.json. A proposal "
                    f"that fails its plausibility checks is still written for review, with exit status "
                    f"{IMPLAUSIBLE_EXIT}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--volume", action="append", required=True, metavar="NAME=PATH",
                        help="a sequence (t1c required; t1, t2, flair improve the result), repeat per sequence")
    parser.add_argument("--allow-t1c-only", action="store_true",
                        help="accept a proposal from t1c alone (bright t1c is also vessels and choroid plexus)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, empty or an earlier segment)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from KiMapLib.region.qc_picture import qc_montage
    from KiMapLib.region.tumour_region import propose_region, require_plausible

    volume_paths = parse_volume_args(args.volume)
    check_output_folder(args.out, "segmentation", [(f"--volume {name}", path) for name, path in volume_paths.items()])
    volumes = read_volumes(volume_paths)
    case = prepare_case(volumes)
    with progress_bar("tumour segmentation") as progress:
        progress(0.0, "segmenting")
        tumour = propose_region(case)
        progress(0.9, "QC picture")
        qc = tumour.summary(case.reference.GetSpacing())
        with atomic_directory(args.out, "segmentation") as staging:
            import SimpleITK as sitk

            sitk.WriteImage(tumour.label_image(case.reference), str(staging / "tumour_labels.nrrd"),
                            useCompression=True)
            qc_montage(case, tumour.labels, staging / "region_qc.png",
                       title="automatic tumour segmentation — research use only")
            (staging / "region_qc.json").write_text(json.dumps(qc, indent=2, default=str) + "\n")
        progress(1.0, "done")
    volumes_ml = {name: round(count * _voxel_ml(case), 1) for name, count in qc["voxels_per_label"].items()}
    print(f"tumour_labels.nrrd, region_qc.png, region_qc.json -> {args.out}")
    print(f"labels (ml): {volumes_ml}")
    try:
        require_plausible(tumour, args.allow_t1c_only)
    except KiMapError as error:  # written for review, but not to be used as it is
        print(f"kimap segment: not plausible, written for review only: {error}", file=sys.stderr)
        return IMPLAUSIBLE_EXIT
    return 0


def _voxel_ml(case) -> float:
    x, y, z = case.reference.GetSpacing()
    return x * y * z / 1000.0
