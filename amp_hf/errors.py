"""User-facing errors: bad input the user can fix.

Every class here derives from ``UsageError``; the command line prints such an error as one line naming the
fix, without a traceback, and exits with code 2. Library code raises them (and callers may catch them as
``ValueError`` / ``FileExistsError`` where that is what they are); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input the user can fix; printed without a traceback, exit code 2."""


class ConfigError(UsageError, ValueError):
    """A config key or value (YAML file, KEY=VALUE override or option) that cannot be used."""


class DataError(UsageError, ValueError):
    """A data source that cannot be read or does not fit the model."""


class CheckpointError(UsageError, ValueError):
    """A checkpoint folder that is missing, damaged, or not what the command needs."""


class PlanError(UsageError, ValueError):
    """A PrunePlan (kept neurons per layer) that does not fit the model or is inconsistent."""


class UnsupportedModelError(UsageError, ValueError):
    """A model family amp-hf does not support; the message lists the supported classes."""


class OutputError(UsageError, FileExistsError):
    """An output path amp-hf must not (or cannot) write: it exists, holds someone else's files, overlaps an
    input, or its parent is not a writable folder. Raised before any compute."""


class LinkOutsideError(UsageError, ValueError):
    """A symlink in a folder amp-hf sends or copies whose target lies outside that folder."""
