"""repalign: layer-by-layer representational alignment of scientific foundation models."""

__version__ = "0.1.0"

from repalign.errors import InvalidInput, ModelUnavailable, RepalignError

__all__ = ["RepalignError", "InvalidInput", "ModelUnavailable", "__version__"]
