"""Typed reads of the daemons' TOML configuration tables (``[cacher]``, ``[csc]``): one place
for the checks and their messages; each daemon passes the error class it raises."""

from __future__ import annotations

from typing import Any

Address = tuple[str, int]


def address(text: str, key: str, error: type[Exception]) -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise error(f"{key}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def string(table: dict[str, Any], key: str, error: type[Exception]) -> str | None:
    """``table[key]`` as a string, None when absent."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"{key} must be a string")
    return value


def strings(table: dict[str, Any], key: str, error: type[Exception]) -> tuple[str, ...]:
    """``table[key]`` as a list of strings (a single string is a list of one)."""
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"{key} must be a list of strings")
    return tuple(value)


def number(table: dict[str, Any], key: str, default: float, error: type[Exception]) -> float:
    """``table[key]`` as a number (an int or a float, not a boolean)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{key} must be a number")
    return float(value)


def integer(
    table: dict[str, Any], key: str, default: int | None, error: type[Exception]
) -> int | None:
    """``table[key]`` as an integer (not a boolean), ``default`` when absent."""
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{key} must be an integer")
    return value


def boolean(table: dict[str, Any], key: str, default: bool, error: type[Exception]) -> bool:
    """``table[key]`` as a boolean, ``default`` when absent."""
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise error(f"{key} must be true or false")
    return value
