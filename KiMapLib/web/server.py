"""Starting the web app: who may connect (127.0.0.1 only, another host only with an access token), off-screen
rendering without a display, and the trame server's own command line kept out of the way."""

from __future__ import annotations

import functools
import ipaddress
import os

from KiMapLib.errors import KiMapError

LOCAL_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def check_access(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without an access token (before anything starts)."""
    if token is not None and not token.strip():
        raise KiMapError("the access token is empty", input_name="--token", hint="give a long random string")
    if not _is_loopback(host) and not token:
        raise KiMapError(f"refusing to serve on {host} without an access token", input_name="--host",
                         hint="add --token T (a long random string) and open http://HOST:PORT/?secret=T; "
                              "without --host the app listens on 127.0.0.1 only")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_rendering() -> None:
    """Render slice views off-screen through EGL (Mesa llvmpipe without a GPU) when there is no X display.

    Must run before VTK makes its first render window; an explicit ``VTK_DEFAULT_OPENGL_WINDOW`` is kept."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The address to open; the token travels as ``?secret=`` (the trame client sends it, then drops it)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?secret={token}" if token else "")


def pin_server_options(server, host: str, port: int, token: str | None) -> None:
    """Make the trame server use exactly these options, not the process's own command line (``kimap web ...``
    or pytest's), which trame would otherwise parse for its own flags."""
    arguments = ["--host", host, "--port", str(port)]
    if token:
        arguments += ["--authKey", token]
    server.cli.parse_known_args = functools.partial(type(server.cli).parse_known_args, server.cli, arguments)


def start(server, *, host: str = LOCAL_HOST, port: int = DEFAULT_PORT, token: str | None = None, **kwargs):
    """Check access, then start ``server`` (blocking by default; ``exec_mode="task", thread=True`` in tests)."""
    check_access(host, token)
    pin_server_options(server, host, port, token)
    kwargs.setdefault("open_browser", False)
    return server.start(host=host, port=port, **kwargs)
