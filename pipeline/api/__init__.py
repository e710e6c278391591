"""The REST front door (issue 15): send messages and read their status over HTTP."""

from pipeline.api.app import build_app
from pipeline.api.server import serve

__all__ = ["build_app", "serve"]
