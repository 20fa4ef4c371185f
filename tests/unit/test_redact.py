"""The scrubber under the one hazard a unit test shows better than the gateway: the log
record factory calls it, so a log call made *while it rebuilds its regexes* (a
finalizer run by the garbage collector, such as asyncio's "Task was destroyed but it
is pending") comes back into it on the same thread.  It once deadlocked the event
loop there (seen as a gateway that stopped mid-stream after an unrelated test)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_log_call_during_a_rebuild_does_not_deadlock() -> None:
    script = textwrap.dedent('''
        import gc, logging
        from tornado_proxy.observability import redact
        logging.basicConfig(level=logging.DEBUG, stream=open("/dev/null", "w"))
        log = logging.getLogger("x")

        class Noisy:
            def __init__(self): self.me = self  # a cycle: only the collector frees it
            def __del__(self): log.error("finalizer logs %s", "sk-proj-abcdefghijklmnopqrstu")

        real_mask = redact.mask
        def mask(s):  # the collector runs while masks are computed, as it may at any allocation
            Noisy(); gc.collect()
            return real_mask(s)
        redact.mask = mask
        redact.note("a", ["secret-value-abcdefgh"])
        print(redact.text("x secret-value-abcdefgh"))
    ''')
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "x ****efgh"
