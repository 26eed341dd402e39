"""The one error type an audit stops on: its message is what the user reads."""

from __future__ import annotations


class AuditError(RuntimeError):
    """The audit cannot go on; the message says why and, where it can, which series."""
