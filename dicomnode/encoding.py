"""Value padding of the few DICOM elements the node encodes by hand (PS3.5 6.2)."""

from __future__ import annotations


def uid_value(uid: str) -> bytes:
    """A UI value: padded to even length with NUL."""
    value = uid.encode("ascii", "replace")
    return value + b"\0" * (len(value) % 2)


def text_value(text: str) -> bytes:
    """An SH or AE value: padded to even length with a space."""
    value = text.encode("ascii", "replace")
    return value + b" " * (len(value) % 2)
