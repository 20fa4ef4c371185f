"""tornado-proxy: an LLM API gateway on the Tornado event loop."""

__version__ = "0.1.0"
