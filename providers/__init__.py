"""Upstream providers, one module per upstream API, registered in one explicit table.

A config entry's ``type`` is looked up here; an unknown type fails at start.
"""
from __future__ import annotations

from .anthropic_messages import AnthropicProvider
from .base import Provider
from .bedrock import BedrockProvider
from .coze import CozeProvider
from .echo import EchoProvider
from .openai_chat import OpenAIChatProvider
from .openai_responses import ResponsesProvider
from .gemini import GeminiProvider

PROVIDER_TYPES: tuple[tuple[str, type[Provider]], ...] = (
    ("echo", EchoProvider),
    ("openai", OpenAIChatProvider),
    ("anthropic", AnthropicProvider),
    ("openai-responses", ResponsesProvider),
    ("bedrock", BedrockProvider),
    ("gemini", GeminiProvider),
    ("coze", CozeProvider),
)
