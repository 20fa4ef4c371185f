"""Process faults on the real CLI (docs/operations-limits.md): SIGTERM during start-up
and under load, drain that refuses new connections at once and ends cut streams with
an error frame, workers that die with their parent, and a killed worker's streams
counted once and its replacement started at once.  Every process is killed in a
``finally`` (tests/e2e/processes.py) and every wait is bounded."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import openai
import pytest

from tests.e2e.harness import LoopThread, Reply, openai_provider, simple_config
from tests.e2e.processes import alive, echo_config, gateway

MSGS = [{"role": "user", "content": "hi"}]


def wait_for(cond: Callable[[], Any], limit: float) -> Any:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    return cond()


def stream_config(up: Any, **server: Any) -> dict[str, Any]:
    return simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 10, "idle": 30})],
                         [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}], **server)


def chunk(text: str) -> bytes:
    return (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
            b'"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % text.encode())


def open_stream(port: int, model: str = "m") -> socket.socket:
    """A streaming chat request on a raw socket, once its first bytes have come back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"model": model, "messages": MSGS, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    return s


# -- 6: an aborted upload does not hold up a stop -------------------------------------

def test_sigterm_after_an_aborted_upload_drains_at_once(tmp_path: Path) -> None:
    with gateway(tmp_path, echo_config(drain_seconds=20), workers=1) as g:
        g.wait_ready()
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b'{"model":"echo","messages":[' + b" " * 5000)
        time.sleep(0.3)
        s.close()
        time.sleep(0.3)
        g.proc.send_signal(signal.SIGTERM)
        assert g.proc.wait(5) == 0  # not the 20 s drain time
        assert "draining: 0 request(s) in flight" in g.stderr()


# -- 11: SIGTERM, drain ---------------------------------------------------------------

def test_sigterm_right_after_start_exits_0_every_time_under_cpu_load(tmp_path: Path) -> None:
    """Start, one request, SIGTERM, with two CPU burners beside it.  A worker still
    starting when the SIGTERM came used to die of it (exit status -15), and the
    gateway exited 1 about one time in three."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    codes = []
    try:
        for _ in range(10):
            with gateway(tmp_path, None, workers=2) as g:  # the built-in default config
                end = time.monotonic() + 30
                while time.monotonic() < end:  # the first worker up answers; the other may not be yet
                    try:
                        urllib.request.urlopen(g.url + "/health", timeout=2)
                        break
                    except OSError:
                        time.sleep(0.05)
                g.proc.send_signal(signal.SIGTERM)
                try:
                    codes.append(g.proc.wait(20))
                except subprocess.TimeoutExpired:
                    codes.append("hung")
                if codes[-1] != 0:
                    print(g.stderr())
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert codes == [0] * 10


def test_drain_refuses_new_connections_at_once_while_streams_finish(harness: LoopThread, tmp_path: Path) -> None:
    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "text/event-stream"},
                       chunks=[chunk("a")] + [chunk("b")] * 10 + [b"data: [DONE]\n\n"], delay=0.2)
    with gateway(tmp_path, stream_config(up, drain_seconds=15), workers=2) as g:
        g.wait_ready(workers=2)
        streams = [open_stream(g.port) for _ in range(4)]  # (spread over both workers, or not)
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the workers have begun draining, streams still in flight
        assert g.proc.poll() is None
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.port), timeout=3)
        assert time.monotonic() - start < 1
        for s in streams:  # each finishes whole
            data = b""
            s.settimeout(10)
            while not data.endswith(b"0\r\n\r\n"):
                d = s.recv(65536)
                assert d, data
                data += d
            assert b"[DONE]" in data
        assert g.proc.wait(10) == 0


def test_streams_cut_at_the_drain_deadline_end_with_a_server_draining_frame(harness: LoopThread) -> None:
    import anthropic

    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "text/event-stream"}, chunks=[chunk("Hel")], hang=True)
    gw = harness.gateway(stream_config(up, drain_seconds=0.5))
    # passed through (OpenAI client, OpenAI upstream) ...
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    s1 = oai.chat.completions.create(model="m", messages=MSGS, stream=True)
    it1 = iter(s1)
    assert next(it1).choices[0].delta.content == "Hel"
    # ... and translated (Anthropic client, OpenAI upstream)
    ant = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    s2 = iter(ant.messages.create(model="m", max_tokens=10, messages=MSGS, stream=True))
    while next(s2).type != "content_block_delta":
        pass
    fut = asyncio.run_coroutine_threadsafe(gw.server.drain(), harness.loop)  # as SIGTERM does
    with pytest.raises(openai.APIError) as e1:
        for _ in it1:
            pass
    assert "shutting down" in e1.value.message and (e1.value.body or {}).get("code") == "server_draining"
    with pytest.raises(anthropic.APIStatusError) as e2:
        for _ in s2:
            pass
    assert "shutting down" in str(e2.value) and e2.value.body["error"]["type"] == "overloaded_error"
    fut.result(10)


# -- 12: the parent dies ---------------------------------------------------------------

def test_kill_9_of_the_parent_takes_the_workers_and_frees_the_port(tmp_path: Path) -> None:
    with gateway(tmp_path, echo_config(), workers=2) as g:
        g.wait_ready(workers=2)
        workers = g.worker_pids()
        assert len(workers) == 2
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait(5)
        assert wait_for(lambda: not any(alive(p) for p in workers), 2.5), "workers outlived their parent"
        with gateway(tmp_path, echo_config(), workers=1, port=g.port) as g2:  # the same port binds
            g2.wait_ready()
            assert urllib.request.urlopen(g2.url + "/health", timeout=5).status == 200
            assert "Address already in use" not in g2.stderr()


def test_the_parent_pipe_alone_makes_a_worker_drain(harness: LoopThread) -> None:
    """The portable fallback, without PR_SET_PDEATHSIG: the worker watches the read end
    of a pipe whose write end only the parent holds; end of file means the parent died."""
    gw = harness.gateway(echo_config())
    r, w = os.pipe()
    try:
        harness.call(gw.server.watch_parent, r)
        time.sleep(0.2)
        assert not gw.gw.draining
        os.close(w)  # what the kernel does when the parent dies, however it dies
        w = -1
        assert wait_for(lambda: gw.gw.draining, 3)
        with pytest.raises(ConnectionRefusedError):  # draining: no longer listening
            socket.create_connection(("127.0.0.1", gw.port), timeout=3)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# -- 13: a worker killed -----------------------------------------------------------------

def read_streams_per_worker(d: Path, pids: list[int]) -> dict[int, float]:
    from prometheus_client.mmap_dict import MmapedDict

    out = {}
    for pid in pids:
        f = d / f"gauge_livesum_{pid}.db"
        total = 0.0
        if f.exists():
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(f)):
                if json.loads(key)[0] == "tornado_proxy_active_streams":
                    total += value
        out[pid] = total
    return out


def test_a_killed_worker_s_streams_are_counted_once_and_it_is_replaced_at_once(harness: LoopThread,
                                                                                 tmp_path: Path) -> None:
    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "text/event-stream"}, chunks=[chunk("a")], hang=True)
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    with gateway(tmp_path, stream_config(up), workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(mdir)}) as g:
        g.wait_ready(workers=2)
        workers = g.worker_pids()
        streams = [open_stream(g.port) for _ in range(6)]
        per = wait_for(lambda: (lambda p: sum(p.values()) == 6 and p)(read_streams_per_worker(mdir, workers)), 5)
        assert per, read_streams_per_worker(mdir, workers)
        victim = max(per, key=lambda p: per[p])
        lost = int(per[victim])
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        new = wait_for(lambda: [p for p in g.worker_pids() if p not in workers], 3)
        assert new and time.monotonic() - start < 1.0, "the replacement did not start within a second"
        # the replacement serves
        assert wait_for(lambda: g.stderr().count("tornado-proxy listening on") == 3, 10)
        err = g.stderr()
        lines = [ln for ln in err.splitlines() if f"(pid {victim})" in ln]
        assert len(lines) == 1 and f"with {lost} stream(s) in flight, lost" in lines[0], lines
        assert "was killed by SIGKILL" in lines[0]
        text = urllib.request.urlopen(g.url + "/metrics", timeout=5).read().decode()
        assert f"tornado_proxy_worker_lost_streams_total {float(lost)}" in text
        assert "tornado_proxy_worker_restarts_total 1.0" in text
        # the streams of the other worker go on; those of the victim were cut
        for s in streams:
            s.close()
