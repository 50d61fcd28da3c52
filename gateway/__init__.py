"""Resilient LLM gateway: serve the request, fail over, stream, record the outcome."""

__all__ = ["__version__"]

__version__ = "0.1.0"
