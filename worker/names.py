"""Checks for file names that come from clients (model names, image names, filename prefixes)."""

from __future__ import annotations

import re

_DRIVE = re.compile(r"^[A-Za-z]:")


def relative_name_problem(name: object) -> str | None:
    """Why `name` is not a safe relative file name inside its folder, or None when it is.

    Names are relative paths with '/' separators, as ComfyUI lists them. Anything that could leave the
    folder (absolute paths, '..' parts, backslashes, drive letters) or confuse the file system is refused.
    """
    if not isinstance(name, str):
        return f"expected a file name (string), got {type(name).__name__}"
    if not name.strip():
        return "file name is empty"
    if len(name) > 255:
        return "file name is longer than 255 characters"
    if "\x00" in name or any(ord(ch) < 32 for ch in name):
        return "file name contains control characters"
    if "\\" in name:
        return "file name contains a backslash; use '/' between folders"
    if name.startswith("/") or name.startswith("~") or _DRIVE.match(name):
        return "absolute paths are not allowed; give a name relative to its folder"
    parts = name.split("/")
    if any(part in ("..", ".") for part in parts):
        return "'..' and '.' path parts are not allowed"
    if any(part == "" for part in parts):
        return "file name has an empty path part"
    return None
