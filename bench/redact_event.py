#!/usr/bin/env python3
"""Per-event cost of scrubbing a passed-through stream (tornado_proxy.observability.redact).

Times what ``LLMHandler._on_passthrough`` adds per upstream read: the check that
some secret is known, finding the last newline, and one regex search over a typical
~200-byte ``chat.completion.chunk`` event, against 0 to 200 accounts' secrets (a flat
alternation would grow with them; the trie does not).

    .venv/bin/python bench/redact_event.py
"""
from __future__ import annotations

import base64
import os
import re
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tornado_proxy.observability.redact import Scrubber  # noqa: E402

EVENT = (b'data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
         b'"created":1741570283,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" hello"},'
         b'"finish_reason":null}]}\n\n')
N = 100000


def secret(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(os.urandom(36)).decode()


def main() -> None:
    print(f"event: {len(EVENT)} bytes; best of 5 x {N}")
    print("accounts  secrets   trie ns/event   flat alternation ns/event")
    for n in (0, 1, 10, 50, 200):
        s = Scrubber()
        for i in range(n):  # OAuth accounts hold an access and a refresh token, key accounts a key
            s.note(f"a{i}", [secret("sk-proj-"), secret("rt-")] if i % 2 else [secret("sk-ant-api03-")])
        s.note("server", [secret("gw-"), secret("admin-")])  # an access key and the admin token

        def per_event() -> None:
            data = EVENT
            if s.active:
                cut = data.rfind(b"\n") + 1
                s.data(data[:cut] if cut < len(data) else data)

        flat = re.compile(b"|".join(re.escape(x.encode()) for x in sorted(s.secrets(), key=len, reverse=True)))
        t = min(timeit.repeat(per_event, number=N, repeat=5)) / N
        f = min(timeit.repeat(lambda: flat.search(EVENT), number=N, repeat=5)) / N
        print(f"{n:8d}  {len(s.secrets()):7d}   {t * 1e9:13.0f}   {f * 1e9:13.0f}")


if __name__ == "__main__":
    main()
