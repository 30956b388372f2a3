"""The kit's error types: each says what is wrong and how to fix it, in one line; CLIs print it and exit 2."""

from __future__ import annotations


class KitError(Exception):
    """A user-facing problem (bad config, data, files, members, uploads): one line naming the file/key and the fix."""


class ConfigError(KitError, ValueError):
    """A config file or override is invalid; the message says which and how to fix it."""


class DataError(KitError, ValueError):
    """A data table or image folder is unusable; the message names the file, the rows and the fix."""
