"""Usage read back from a passed-through answer (metrics only), by the upstream's own
reader (``Provider.usage_of``): the pipeline knows no vendor's usage shape."""
from __future__ import annotations

from typing import Any

import pytest

from providers import PROVIDER_TYPES
from tornado_proxy.pipeline.passthrough import usage_from_tail

PROVIDERS = {name: cls({"name": name, "type": name}) for name, cls in PROVIDER_TYPES
             if name in ("openai", "anthropic", "openai-responses", "gemini")}

CASES = [
    ("openai usage chunk", "openai",
     b'data: {"choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}}\n\ndata: [DONE]\n\n',
     {"prompt_tokens": 19, "completion_tokens": 10}),
    ("anthropic: input from message_start, output from message_delta", "anthropic",
     b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
     b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
     b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
     {"prompt_tokens": 7, "completion_tokens": 42, "total_tokens": 49}),
    ("anthropic cache reads count as prompt tokens", "anthropic",
     b'event: message_delta\ndata: {"type":"message_delta","usage":{"input_tokens":3,"cache_read_input_tokens":100,'
     b'"output_tokens":5}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n',
     {"prompt_tokens": 103, "completion_tokens": 5, "total_tokens": 108,
      "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 0}}),
    ("responses: the usage of response.completed", "openai-responses",
     b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
     b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":4,'
     b'"output_tokens":6,"total_tokens":10,"output_tokens_details":{"reasoning_tokens":2}}}}\n\n',
     {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 2}}),
    ("gemini usageMetadata, thoughts are completion tokens", "gemini",
     b'data: {"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"thoughtsTokenCount":2}}\r\n\r\n',
     {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 2}}),
    ("no usage", "openai", b'data: {"choices":[]}\n\ndata: [DONE]\n\n', None),
    ("another format's usage is not this upstream's", "openai",
     b'data: {"type":"message_delta","usage":{"output_tokens":42}}\n\n', None),
    ("usage line cut at the start of the tail", "openai", b'e":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n', None),
]


@pytest.mark.parametrize("name,provider,tail,expected", CASES, ids=[c[0] for c in CASES])
def test_usage_from_tail(name: str, provider: str, tail: bytes, expected: dict[str, Any] | None) -> None:
    assert usage_from_tail(tail, PROVIDERS[provider].usage_of) == expected


def test_a_stream_of_small_reads_keeps_only_its_last_reads_and_its_first_usage() -> None:
    """What a held pass-through stream keeps of what it relayed: its last TAIL_READS
    reads, whole, and, in a format that puts usage in its first event (Anthropic's
    message_start, with the input tokens), its first read, however many reads came; a
    slow stream holds ~1 KiB for minutes, not 4 KiB and more."""
    from types import SimpleNamespace

    from tornado_proxy.pipeline.handler import LLMHandler
    from tornado_proxy.pipeline.passthrough import TAIL_READS

    sent: list[bytes] = []
    h = SimpleNamespace(_tails=[], _first_usage=None, _want_first=True, _rewrite=None, _send=sent.append)
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","usage":'
             b'{"input_tokens":321,"output_tokens":1}}}\n\n')
    deltas = [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
              b'{"type":"text_delta","text":"w%03d"}}\n\n' % i for i in range(300)]
    end = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
           b'"usage":{"output_tokens":300}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    reads = [start, *deltas, end]
    for i, data in enumerate(reads):
        LLMHandler._relay(h, data)  # type: ignore[arg-type]
        assert len(h._tails) <= TAIL_READS and h._tails[-1] is data
        assert h._first_usage is start
        held = sum(len(t) for t in h._tails if t is not start) + len(start)
        assert held <= len(start) + TAIL_READS * max(len(r) for r in reads), f"read {i}: {held} bytes held"
    assert sent == reads
    tail = LLMHandler._tail(h)  # type: ignore[arg-type]
    assert tail == start + b"".join(reads[-TAIL_READS:])
    assert b"message_stop" in tail
    assert usage_from_tail(tail, PROVIDERS["anthropic"].usage_of) == {
        "prompt_tokens": 321, "completion_tokens": 300, "total_tokens": 621}
