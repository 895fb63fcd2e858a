"""One exception base for user mistakes; each front door turns it into its own form
(IPython UsageError, CLI exit status 2, HTTP 4xx JSON)."""


class MlopsError(Exception):
    """A problem the user can fix: the message says what was wrong and what would be right."""


class ConfigError(MlopsError):
    """Bad configuration value in magic arguments, MLOPS_* variables or [tool.mlops]."""


class StoreError(MlopsError):
    """The tracking store could not be read or written (down, unreachable, refusing)."""
