"""``p2pcdn wireshark install [--dir D]``: copy our Lua dissectors into Wireshark's plugin folder.

The dissectors (interop/wireshark/ppspp.lua for PPSPP, ppsptp.lua for PPSP-TP binary) are
plain Lua plugins: Wireshark and tshark load every ``*.lua`` of the personal Lua plugin folder
at start-up. That folder is the one ``tshark -G folders`` calls "Personal Lua Plugins" when
tshark is installed, else the platform's default (Wireshark's user guide, "Plugin folders"):
``%APPDATA%\\Wireshark\\plugins`` on Windows, ``~/.local/lib/wireshark/plugins`` elsewhere.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["LUA_FILES", "SOURCE_DIR", "add_arguments", "default_plugin_dir", "install", "run"]

SOURCE_DIR = Path(__file__).resolve().parent / "wireshark"
LUA_FILES = ("ppspp.lua", "ppsptp.lua")
_TSHARK_TIMEOUT = 20.0


def _from_tshark() -> Path | None:
    tshark = shutil.which("tshark")
    if tshark is None:
        return None
    try:
        out = subprocess.run(
            [tshark, "-G", "folders"],
            capture_output=True,
            text=True,
            timeout=_TSHARK_TIMEOUT,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "Personal Lua Plugins" and value.strip():
            return Path(value.strip())
    return None


def default_plugin_dir() -> Path:
    """Wireshark's personal Lua plugin folder on this machine."""
    found = _from_tshark()
    if found is not None:
        return found
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        if appdata:
            return Path(appdata) / "Wireshark" / "plugins"
    return Path.home() / ".local" / "lib" / "wireshark" / "plugins"


def install(directory: Path | None = None) -> list[Path]:
    """Copy the Lua dissectors into ``directory`` (default: :func:`default_plugin_dir`),
    creating it; return the installed files. Raises :class:`OSError`."""
    target = directory if directory is not None else default_plugin_dir()
    target.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in LUA_FILES:
        dest = target / name
        shutil.copyfile(SOURCE_DIR / name, dest)
        installed.append(dest)
    return installed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="wireshark_action", metavar="ACTION", required=True)
    inst = actions.add_parser(
        "install",
        help="copy the PPSPP and PPSP-TP Lua dissectors into Wireshark's plugin folder",
        description="Copy interop/wireshark/ppspp.lua and ppsptp.lua into the personal Lua "
        "plugin folder of Wireshark (or --dir), then print where they went. Restart "
        "Wireshark (or run tshark) to load them.",
    )
    inst.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="D",
        help="install into D instead of Wireshark's personal Lua plugin folder",
    )


def run(args: argparse.Namespace) -> int:
    """Install; 0 on success, 1 when the files cannot be written."""
    try:
        files = install(args.dir)
    except OSError as exc:
        print(f"p2pcdn wireshark install: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    print(
        f"installed {len(files)} Lua dissectors in {files[0].parent}; they load when "
        "Wireshark or tshark starts (PPSPP on UDP 7777, PPSP-TP on UDP/TCP 7846; "
        "other ports: Decode As, or -o ppspp.port:N)"
    )
    return 0
