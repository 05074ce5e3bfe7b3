"""``semask serve``: a local web demo and JSON endpoint, built on the standard library only."""

from .app import ModelService, RequestError, make_server, serve

__all__ = ["ModelService", "RequestError", "make_server", "serve"]
