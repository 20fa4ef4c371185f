"""Upstream providers, one module per upstream API, registered in one explicit table.

A config entry's ``type`` is looked up here; an unknown type fails at start.
"""
from __future__ import annotations

from .base import Provider
from .echo import EchoProvider
from .openai_chat import OpenAIChatProvider

PROVIDER_TYPES: tuple[tuple[str, type[Provider]], ...] = (
    ("echo", EchoProvider),
    ("openai", OpenAIChatProvider),
)
