"""POST /v1/chat/completions: the OpenAI Chat Completions route."""
from __future__ import annotations

from tornado_proxy.pipeline.handler import LLMHandler


class ChatCompletionsHandler(LLMHandler):
    schema_name = "chat_completions.request.v1"
    route_name = "chat_completions"
