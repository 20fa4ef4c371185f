"""Usage read back from the tail of a passed-through stream (metrics only)."""
from __future__ import annotations

import pytest

from tornado_proxy.pipeline.handler import usage_from_tail

CASES = [
    ("openai usage chunk", b'data: {"choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}}\n\ndata: [DONE]\n\n',
     {"prompt_tokens": 19, "completion_tokens": 10}),
    ("anthropic: input from message_start, output from message_delta",
     b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
     b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
     b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
     {"prompt_tokens": 7, "completion_tokens": 42}),
    ("gemini usageMetadata", b'data: {"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3}}\r\n\r\n',
     {"prompt_tokens": 5, "completion_tokens": 3}),
    ("no usage", b'data: {"choices":[]}\n\ndata: [DONE]\n\n', None),
    ("usage line cut at the start of the tail", b'e":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n', None),
]


@pytest.mark.parametrize("name,tail,expected", CASES, ids=[c[0] for c in CASES])
def test_usage_from_tail(name: str, tail: bytes, expected: dict | None) -> None:
    assert usage_from_tail(tail) == expected
