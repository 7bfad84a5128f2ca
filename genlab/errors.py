"""User-facing errors: Hydra prints these as one message, without a traceback.

`HYDRA_FULL_ERROR=1` still shows the full stack trace.
"""

from hydra.errors import CompactHydraException


class GenlabError(CompactHydraException):
    """A mistake the user can fix; the message says what and how."""


class ConfigError(GenlabError):
    """A config value, type, key or combination that genlab cannot run."""


class DataUnavailableError(GenlabError):
    """A data set that is neither on disk nor downloadable."""
