"""cmdd: a Twisted daemon that runs commands for HTTPS REST clients."""

from __future__ import annotations

__version__ = "0.1.0"
