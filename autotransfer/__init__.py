"""autotransfer: automated transfer-learning protocol search for image classification."""
from __future__ import annotations

__version__ = "0.1.0"

from autotransfer.errors import UserError

__all__ = ["UserError", "__version__"]
