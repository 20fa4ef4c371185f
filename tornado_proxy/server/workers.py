"""Run the gateway: listen, serve, drain on SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from tornado_proxy.server import busypoll

from tornado_proxy.observability import redact
from tornado_proxy.app import make_app
from tornado_proxy.gateway import Gateway
from tornado_proxy.config import Config
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.server.http1 import HTTP1Server

log = logging.getLogger("tornado_proxy")


# Tornado's default backlog is 128: a burst of a thousand new connections then waits
# for SYN retransmits (1 s, 3 s...) before its first byte.  The kernel caps this at
# net.core.somaxconn.
LISTEN_BACKLOG = 4096


def raise_fd_limit(want: int = 65536) -> int:
    """Each stream holds two sockets (client and upstream): lift the soft open-files
    limit to the hard one (root may raise the hard one too).  Returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new in ((max(want, hard), max(want, hard)), (hard, hard)):
        if new[0] <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            return new[0]
        except (ValueError, OSError):
            continue
    return soft


def setup_logging(config: Config) -> None:
    level = getattr(logging, str(config.server.get("log_level", "info")).upper(), logging.INFO)
    fmt = "%(message)s" if config.server.get("log_format") == "json" else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    redact.install_logging()  # every record, at every level, masks every known secret
    # Tornado's own access log would print a second line per request.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def _warm_up() -> None:
    """Compile the request validators now rather than on the first request."""
    from tornado_proxy.app import ROUTES
    from tornado_proxy.pipeline.validation import is_valid

    for r in ROUTES:
        name = getattr(r.handler, "schema_name", None)
        if name:
            is_valid(name, {})


class Server:
    """One gateway process: app, HTTP server, and the drain sequence."""

    def __init__(self, config: Config, host: str | None = None, port: int | None = None) -> None:
        self.config = config
        self.host = host if host is not None else config.server["host"]
        self.port = port if port is not None else config.server["port"]
        self.gw = Gateway(config)
        self.app = make_app(self.gw)
        _warm_up()
        # Bodies are size-checked by the handlers (413 in the client's format); the
        # server's own limit only stops absurd uploads before a handler sees them.
        s = config.server
        server_class: Any = HTTP1Server
        if s["http_server"] == "tornado":
            from tornado_proxy.server.tornado_http import TornadoHTTPServer

            server_class = TornadoHTTPServer
        self.http = server_class(self.app, trusted_proxies=s.get("trusted_proxies") or (),
                                max_body_size=max(s["max_body_bytes"] * 2, 1 << 20),
                                idle_timeout=float(s["keepalive_timeout"]),
                                header_timeout=float(s["client_header_timeout"]),
                                body_timeout=float(s["client_body_timeout"]),
                                max_connections=int(s["max_connections"]))
        self._stopped: asyncio.Event | None = None

    async def listen(self, sockets: Any = None) -> int:
        if sockets is None:
            sockets = bind_sockets(self.port, self.host, backlog=LISTEN_BACKLOG)
        await self.gw.start()  # the shared state is loaded before the first request is taken
        await self.http.add_sockets(sockets)
        self.port = self.http.port
        return int(self.port)

    def warn_open(self) -> None:
        if not self.gw.access_keys:
            log.warning("no access_keys configured: the gateway is open to anyone who can reach %s:%s",
                        self.host, self.port)

    async def drain(self) -> None:
        """Readiness goes 503, new connections stop, streams in flight finish within drain_seconds."""
        if self.gw.draining:
            return
        self.gw.draining = True
        self.gw.metrics.draining.set(1)
        self.http.start_drain()  # stop accepting, close idle keep-alive connections
        for ws in list(self.gw.websockets):
            ws.drain()  # idle Responses WebSockets too (busy ones close after their answer)
        loop = IOLoop.current()
        deadline = loop.time() + float(self.config.server["drain_seconds"])
        log.info("draining: %d request(s) in flight, up to %ss", self.gw.active_requests,
                 self.config.server["drain_seconds"])
        while self.gw.active_requests > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.gw.active_requests:
            log.warning("drain timeout: ending %d request(s) still in flight", self.gw.active_requests)
            # Each ends the way an upstream failure would: an error frame in the
            # client's format after the first byte, a 503 before it; not a body cut short.
            self.gw.upstream.abort_all(ProxyError(
                ErrorKind.DRAINING, "the gateway is shutting down and the request ran past its drain time; retry"))
            end = loop.time() + 1.0
            while self.gw.active_requests > 0 and loop.time() < end:
                await asyncio.sleep(0.01)
        await self.http.close_all_connections()
        await self.http.flushed(1.0)  # what was just written (those frames) goes out before we exit
        await self.gw.close_state()  # the last counts reach the store
        self.gw.close()
        if self._stopped is not None:
            self._stopped.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.drain()))
        # A prefork worker starts with them blocked (see _prefork.spawn): one that came
        # while it started is delivered now, to the handler above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def watch_parent(self, fd: int) -> None:
        """Drain when ``fd`` (the read end of a pipe whose write end only the parent
        holds) reaches end of file: the parent has died, however it died."""
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(fd)
            log.warning("the parent process is gone: draining")
            asyncio.ensure_future(self.drain())

        loop.add_reader(fd, gone)

    async def run_forever(self, parent_watch: int | None = None) -> None:
        self._stopped = asyncio.Event()
        if parent_watch is not None:
            self.watch_parent(parent_watch)
        self.install_signals()
        self.gw.scheduler.install_sighup()  # SIGHUP: re-read the accounts file
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (blocked across the fork)
        await self._stopped.wait()


def serve(config: Config, host: str | None = None, port: int | None = None, workers: int = 1) -> int:
    """Serve until SIGTERM/SIGINT.  ``workers`` > 1: that many processes share one listening socket."""
    setup_logging(config)
    # A stream holds a client and an upstream socket; idle keep-alive connections one.
    raise_fd_limit(int(config.server["max_connections"]) + int(config.server["max_clients"]) + 1024)
    host = host if host is not None else config.server["host"]
    port = port if port is not None else config.server["port"]
    if workers <= 1:
        busypoll.run(_worker_main(config, host, port, None), config.server["busy_poll_us"])
        return 0
    return _prefork(config, host, port, workers)


# The young generation's threshold.  Python's default (700) counts objects made minus
# objects freed, and the requests in flight alone hold more than 700: at 16 concurrent
# non-stream requests it ran a young pass every 16 requests, each freeing nothing
# (3.4 us of 150 us per request).  At 5000: no pass over 40 000 requests at 16
# concurrent, one or two a second at 64, so requests leave no cycles behind.  Higher
# is no faster and makes the older generation's passes longer: ramping up to 10 000
# slow streams, the first bytes' median wait was 32-34 ms at 5000, 47-102 ms at 20 000.
GC_YOUNG = 5000


async def _worker_main(config: Config, host: str, port: int, sockets: Any,
                       parent_watch: int | None = None) -> None:
    import gc

    server = Server(config, host, port)
    await server.listen(sockets)
    # Everything built so far lives as long as the process: keep it out of the
    # collector's way, and make the full (slowest) pass rare; a pause there stalls
    # every stream in flight.
    gc.collect()
    gc.freeze()
    _, g1, _ = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, g1, 100)
    server.warn_open()
    log.info("tornado-proxy listening on http://%s:%s (%d provider(s), %d model route(s))",
             server.host, server.port, len(server.gw.providers), len(config.models))
    await server.run_forever(parent_watch)
    log.info("drained; exiting")


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_FORK_BLOCKED = _STOP_SIGNALS | {signal.SIGHUP}


def _prefork(config: Config, host: str, port: int, workers: int) -> int:
    """Bind once, fork ``workers`` children; forward SIGTERM/SIGINT to them and wait.

    A worker that dies while we are not stopping is replaced at once; the streams it
    had in flight are lost with it, and logged and counted here, once.  Metrics stay
    right across workers through prometheus_client's multiprocess mode (the CLI sets
    PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client).

    Workers do not outlive us: each asks the kernel for a SIGTERM when we die
    (``PR_SET_PDEATHSIG``, Linux) and watches a pipe whose write end only we hold
    (end of file: we are gone, on any system); either way it drains and exits, and
    since draining closes its listening socket, a new gateway can bind the port.
    """
    sockets = bind_sockets(port, host, backlog=LISTEN_BACKLOG)
    children: dict[int, int] = {}
    stopping = False
    parent = os.getpid()
    watch_r, watch_w = os.pipe()

    def spawn(slot: int) -> None:
        # SIGTERM/SIGINT stay blocked across the fork and in the child until its loop
        # handles them (Server.install_signals): a worker still starting up neither dies
        # of one (exit status -15: a failed stop) nor runs our handler, and a stop that
        # comes meanwhile waits, pending, until it can drain.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            raise
        if pid == 0:
            code = 0
            try:
                os.close(watch_w)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # Not the parent's forwarder (it would signal our siblings) and not the
                # default (death): ignored until the worker's own handler is in place.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _die_with_parent(parent)
                busypoll.run(_worker_main(config, host, port, sockets, watch_r), config.server["busy_poll_us"])
            except BaseException:
                log.exception("worker %d failed", slot)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        children[pid] = slot

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            # Our copy of the listening socket would keep the port open while the
            # workers drain: connections accepted by nobody, hanging, then reset.
            # Closed, new connections are refused at once (the workers close theirs).
            for sock in sockets:
                sock.close()
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def on_hup(signum: int, frame: Any) -> None:
        # `kill -HUP $MAINPID` (systemctl reload, docker kill -s HUP) reaches only us:
        # each worker re-reads the accounts file on its own SIGHUP.
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    for n in range(workers):
        if stopping:
            break
        spawn(n)
    lost_streams, restarts = _parent_metrics()
    log.info("tornado-proxy: %d workers on http://%s:%s", workers, host,
             sockets[0].getsockname()[1])
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        lost = _streams_in_flight(pid)  # (read before mark_process_dead drops its gauges)
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
        except Exception:
            pass
        if slot is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code != 0
            if code != 0:
                log.warning("worker %d (pid %d) %s while stopping", slot, pid, _how(code))
            continue
        log.warning("worker %d (pid %d) %s with %d stream(s) in flight, lost; starting a new one",
                    slot, pid, _how(code), lost)
        if lost_streams is not None:
            lost_streams.inc(lost)
            restarts.inc()
        spawn(slot)
    os.close(watch_w)
    return 1 if failed else 0


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends us SIGTERM when the parent dies (blocked until our loop
    handles it, then a drain).  Elsewhere the parent pipe does it (Server.watch_parent)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before we asked: the pipe is at EOF already too
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_metrics() -> tuple[Any, Any]:
    """The parent's own series (multiprocess mode: the workers' /metrics include them)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None, None
    from prometheus_client import Counter

    return (Counter("tornado_proxy_worker_lost_streams_total",
                    "Streams in flight in workers that died (killed, crashed) and were replaced", registry=None),
            Counter("tornado_proxy_worker_restarts_total", "Workers that died and were replaced", registry=None))


def _streams_in_flight(pid: int) -> int:
    """The streams a dead worker had in flight: its live gauge, still on disk."""
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = os.path.join(d, f"gauge_livesum_{pid}.db") if d else ""
    if not path or not os.path.exists(path):
        return 0
    import json

    from prometheus_client.mmap_dict import MmapedDict

    total = 0.0
    try:
        for key, value, *_ in MmapedDict.read_all_values_from_file(path):
            if json.loads(key)[0] == "tornado_proxy_active_streams":
                total += value
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, int(total))
