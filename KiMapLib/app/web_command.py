"""``kimap web``: the point-and-click app in a browser (trame-slicer), served from this machine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from KiMapLib.errors import KiMapError

TOKEN_VARIABLE = "KIMAP_WEB_TOKEN"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``kimap web [--port] [--host] [--token] [--volume NAME=PATH ...] [--biopsies] [--model]``."""
    from KiMapLib.web.server import DEFAULT_PORT, LOCAL_HOST

    parser = subparsers.add_parser(
        "web", help="the point-and-click app in your browser (slice views rendered here; research use only)",
        description="Serve KiMap's web app (trame-slicer): load volumes or the demo case, check the model card, "
                    "edit the tumour region, place biopsy points, predict, compute and export the ki67 map. Slice "
                    "views are rendered on this machine; the browser only shows images. Listens on 127.0.0.1 "
                    "unless --host and --token are given. Research use only.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument("--host", default=LOCAL_HOST,
                        help="address to listen on; anything but this machine (127.0.0.1) needs --token")
    parser.add_argument("--token", default=None,
                        help=f"access token the browser must bring (open http://HOST:PORT/?secret=TOKEN); also read "
                             f"from ${TOKEN_VARIABLE} (default: none, allowed on 127.0.0.1 only)")
    parser.add_argument("--volume", action="append", metavar="NAME=PATH", default=None,
                        help="a sequence to load at start (t1c, t2, flair, adc; a file or DICOM folder); repeat per "
                             "sequence (default: none, load in the page)")
    parser.add_argument("--biopsies", type=Path, default=None,
                        help="biopsy points to load at start: CSV (RAS mm) or .mrk.json (default: none, click them)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model bundle folder (default: the packaged model)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from KiMapLib.inputs.images import parse_volume_args
    from KiMapLib.web.server import app_url, check_access, configure_rendering, start

    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE)
    check_access(args.host, token)  # before anything heavy is imported or started
    volumes = parse_volume_args(args.volume or [])
    configure_rendering()
    try:
        from KiMapLib.web.app import create_app
    except ImportError as error:
        raise KiMapError(f"the web app needs {error.name or 'trame-slicer'}, which is not installed",
                         input_name="kimap web", hint="pip install -r requirements.txt (or make setup)") from None
    app = create_app(model_path=args.model)
    if volumes:
        app.load_volume_paths(volumes)
    if args.biopsies:
        app.load_biopsy_file(args.biopsies)
    if app.state.km_error:  # a --volume, --biopsies or --model that could not be used: its one-line message
        raise KiMapError(app.state.km_error)
    print(f"KiMap web app: {app_url(args.host, args.port, token)}  (Ctrl-C stops it; research use only)", flush=True)
    start(app.server, host=args.host, port=args.port, token=token, show_connection_info=False)
    return 0
