"""Exceptions raised by asyncconnmgr."""

from __future__ import annotations

__all__ = ["ConnManagerError", "LimitExceededError", "ManagerClosedError"]


class ConnManagerError(Exception):
    """Base class of every error this library raises on purpose."""


class ManagerClosedError(ConnManagerError):
    """The manager (or the decaying tag) was closed; the call cannot do its work."""


class LimitExceededError(ConnManagerError):
    """`check_limit()` found a high-water mark above the host's connection limit."""
