"""One exception tree for detharness, mapped to the CLI's exit codes.

User mistakes (bad arguments, unusable input) subclass ``ValueError`` or ``TypeError`` as well, so
library callers can catch them the ordinary way; the CLI prints them as one line and exits 2. Any
other exception escaping the CLI is a bug in detharness and exits 3.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class DetHarnessError(Exception):
    """Root of every error detharness raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(DetHarnessError, ValueError):
    """Bad usage or unusable input: one line on stderr, exit 2."""

    exit_code = EXIT_USAGE


class ToleranceError(UsageError):
    """A tolerance string or object that cannot be understood."""


class DtypeError(DetHarnessError, TypeError):
    """Arrays of a dtype the operation does not accept, or of two different dtypes."""

    exit_code = EXIT_USAGE


class CaseError(UsageError):
    """A case definition that is wrong, a duplicate id, or a case file that fails to import."""


class BackendError(UsageError):
    """A backend asked for by name that is unknown or not installed."""


class BundleError(UsageError):
    """A bundle that is missing, corrupt, foreign, newer than this version, or unsafe to read."""
