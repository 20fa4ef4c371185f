"""Client APIs: the formats clients speak to the gateway, one module per API.

Each module holds what a client of that API sees: the request parsed into the pivot
(the OpenAI-chat-shaped request every upstream adapter takes), the answer and the SSE
stream encoded back, and errors in that API's own words.  Upstream adapters live in
``providers/``; a client API never needs to know which upstream serves the model, and
``providers/`` never imports from here.

- ``openai_chat``: ``/v1/chat/completions``
- ``openai_responses``: ``/v1/responses`` (HTTP and WebSocket)
- ``anthropic_messages``: ``/v1/messages`` and ``/v1/messages/count_tokens``
- ``gemini_native``: ``/v1beta/models/{model}:{method}``
"""
