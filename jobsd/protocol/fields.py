"""Typed access to message bodies: every field checked for presence, type and range.

The protocol's leniencies live here and nowhere else, so PROTOCOL.md can state
them once: a nil value is the same as an absent key, and an integer is
accepted wherever a float is expected.
"""

from __future__ import annotations

import math
from typing import Any

from jobsd.protocol.framing import ProtocolError
from jobsd.vocabulary import MAX_BATCH, MAX_NAME_LENGTH


class Fields:
    """One message body (a map). Each getter raises ``ProtocolError`` naming
    the field and the message it belongs to."""

    __slots__ = ("_body", "_what")

    def __init__(self, body: Any, what: str) -> None:
        if not isinstance(body, dict):
            raise ProtocolError(f"{what} must be a map, got {type(body).__name__}")
        self._body: dict[str, Any] = body
        self._what = what

    def __contains__(self, key: str) -> bool:
        return self._body.get(key) is not None

    def _get(self, key: str, required: bool) -> Any:
        value = self._body.get(key)
        if value is None and required:
            raise ProtocolError(f"{self._what}: field '{key}' is required")
        return value

    def _wrong(self, key: str, expected: str, value: Any) -> ProtocolError:
        return ProtocolError(
            f"{self._what}: field '{key}' must be {expected}, got {type(value).__name__}"
        )

    def text(
        self,
        key: str,
        required: bool = True,
        max_len: int = MAX_NAME_LENGTH,
        allow_empty: bool = False,
    ) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not (value or allow_empty):
            raise self._wrong(key, "a non-empty string", value)
        if len(value) > max_len:
            raise ProtocolError(f"{self._what}: field '{key}' is longer than {max_len}")
        return value

    def integer(self, key: str, required: bool = True, low: int = 0, high: int = 2**63 - 1) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        if not low <= value <= high:
            raise ProtocolError(f"{self._what}: field '{key}' must be in {low}..{high}")
        return value

    def number(
        self, key: str, required: bool = True, low: float = 0.0, high: float = math.inf
    ) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        return check_number(value, f"{self._what}: field '{key}'", low, high)

    def flag(self, key: str) -> bool:
        value = self._body.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def binary(self, key: str, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is not None and not isinstance(value, bytes):
            raise self._wrong(key, "binary (msgpack bin)", value)
        return value

    def mapping(self, key: str, required: bool = False) -> Any:
        value = self._get(key, required)
        if value is not None and not isinstance(value, dict):
            raise self._wrong(key, "a map", value)
        return value

    def array(self, key: str, required: bool = True, max_len: int = MAX_BATCH) -> list[Any]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        if len(value) > max_len:
            raise ProtocolError(f"{self._what}: '{key}' holds more than {max_len} items")
        return value

    def names(self, key: str, required: bool = True, max_len: int = MAX_BATCH) -> list[str]:
        items = self.array(key, required, max_len)
        for item in items:
            name(item, f"{self._what}: '{key}' item")
        return items


def check_number(value: Any, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in ``low..high`` (an integer is taken as a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{what} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolError(f"{what} must be a finite number in {low:g}..{high:g}")
    return float(value)


def name(value: Any, what: str, max_len: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(f"{what} must be a non-empty string of at most {max_len} characters")
    return value


def items(value: Any, what: str, lengths: tuple[int, ...]) -> list[Any]:
    if not isinstance(value, list) or len(value) not in lengths:
        raise ProtocolError(f"{what} must be an array of {' or '.join(map(str, lengths))} items")
    return value
