"""genlab: a Hydra-configured experiment runner for image generative models."""

from pathlib import Path

__version__ = "0.1.0"

# The config tree: inside the package in an installed wheel, at the top of a source checkout.
_PACKAGED_CONF = Path(__file__).parent / "conf"
CONF_DIR = (
    _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).parents[1] / "conf"
).resolve()
