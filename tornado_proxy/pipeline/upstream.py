"""Upstream HTTP: one curl-backed AsyncHTTPClient, streaming and abortable.

Why not plain ``fetch(streaming_callback=...)``: Tornado's curl client hands
chunks to the streaming callback through ``add_callback``, one IOLoop turn later
and one call per chunk, and cannot stop a transfer once started.  We install our
own ``WRITEFUNCTION`` and ``HEADERFUNCTION``: the body bytes of one socket action
are gathered and handed to the transfer's ``on_data`` in one piece at the end of
that action, still in the same IOLoop callback, so decode -> translate ->
``write()`` -> ``flush()`` costs one client write per upstream read rather than one
per SSE event.  ``on_data`` returning False (the client has gone) or raising
aborts the transfer at once; a transfer that is idle (no bytes to hand us) is
aborted from outside through :meth:`GatewayCurlClient.abort`.

The status is only known for sure at the first body byte: a proxy's ``CONNECT``
answer and ``100 Continue`` come with header blocks of their own, and the last
status line before the body is the one that counts.  So the first body byte
decides whether the transfer streams to the client (2xx) or is buffered as an
error body for the provider's ``classify_error``.

Our transfers bypass Tornado's per-request bookkeeping in the curl client (see
:class:`GatewayCurlClient`): a transfer is sent in the call that starts it rather than
on the next IOLoop turn, finishes by resolving its future with ``(errno, starttransfer)``
rather than an ``HTTPResponse``, libcurl's timer is kept rather than replaced per
callback, and sockets live in an epoll set of our own that the asyncio loop watches.  Tornado's own
requests (OAuth refreshes) still take Tornado's code paths in the same client.

Size: a body we buffer (a whole answer, or an error body) is capped, at
``max_body_bytes`` for a 2xx answer and ``max_error_bytes`` for anything else; past the
cap the transfer is aborted and ends with ``UPSTREAM_BAD_RESPONSE`` (the bytes counted
are the decoded ones, so a gzip bomb is caught too).  A streamed 2xx body is not
buffered here: it goes to ``on_data`` as it comes.

Timeouts: ``connect`` is curl's own.  ``first_byte`` and ``idle`` are enforced by
one shared sweeper that ticks four times a second; a transfer records the tick at
which it last received bytes (an int copy per chunk, no clock read on the hot path).
"""
from __future__ import annotations

import collections
import ctypes
import logging
import select
from typing import Any, Callable

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import PeriodicCallback

from providers.base import UpstreamRequest

from tornado_proxy.errors import ErrorKind, ProxyError

log = logging.getLogger("tornado_proxy.pipeline.upstream")

TICKS_PER_SECOND = 4
# Idle easy handles beyond what the traffic needed: each keeps its send buffer (16 KiB,
# libcurl 8 frees it only with the handle; bench/curl_send_buffer.py), so after a burst
# of 10 000 streams the idle pool would hold ~200 MiB for good.  Every TRIM_SECONDS the
# handles that stayed idle the whole time are closed, down to IDLE_HANDLES_KEPT.
TRIM_SECONDS = 30
IDLE_HANDLES_KEPT = 64


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another libc).  Closed handles free their
    buffers to malloc, which keeps 16 KiB blocks in its heap: without a trim the
    process's RSS would not come down at all."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


MALLOC_TRIM = _malloc_trim()

# curl error numbers we give a meaning to
_E_COULDNT_RESOLVE = (5, 6)        # proxy, host
_E_COULDNT_CONNECT = 7
_E_OPERATION_TIMEDOUT = 28
_E_URL_MALFORMAT = 3                # a URL we built from the client's input: not the account's fault
_E_WRITE_ERROR = 23                # our write function returned 0 (client gone / translator error)
_E_ABORTED = 42                    # CURLE_ABORTED_BY_CALLBACK: GatewayCurlClient.abort
_E_SSL = (35, 51, 53, 54, 58, 59, 60, 77, 80, 82, 83, 90, 91)
_E_CUT = (18, 52, 55, 56, 92)      # partial file, empty reply, send/recv error, HTTP/2 stream error


class GatewayCurlClient(CurlAsyncHTTPClient):
    """The curl client with a lean path for our own transfers, and handles made on demand.

    Tornado creates all ``max_clients`` easy handles up front: 10 000 of them (what
    10 000 concurrent streams need) cost about 40 MiB before the first request.
    Here they are created as the queue needs them, up to ``max_clients``, and those a
    burst left idle are closed again (:meth:`trim_idle`).

    Our :class:`Transfer` objects do not go through Tornado's per-request machinery,
    which costs more than the rest of the curl layer: an ``info`` dict with a header
    object, a buffer and two clock reads at the start; eight ``getinfo`` calls, a
    timing dict and an ``HTTPResponse`` at the end; and a 0 ms timer, so that the
    request only goes out on the next IOLoop turn.  Instead a transfer takes a handle,
    is set up, added and driven at once (:meth:`start_transfer`), and is finished by
    :meth:`_finish_transfer`, which resolves its future with ``(errno, starttransfer)``.
    A handle running one of ours has ``curl.transfer`` set; Tornado's own requests
    (OAuth refreshes through ``AsyncHTTPClient().fetch``) leave it None and take
    Tornado's code paths, ``curl.info`` and all.  Both kinds wait in Tornado's FIFO
    queue ``_requests`` (ours as ``(transfer, None, 0.0)``) when no handle is free.
    """

    def initialize(self, max_clients: int = 10, defaults: Any = None,  # type: ignore[override]
                   max_body_size: int = 104857600) -> None:
        # (before Tornado's initialize: its dummy add_handle already calls _set_timeout)
        self._timeout_at = 0.0   # when self._timeout (if not None) fires, in IOLoop time
        self._adding = False     # inside add_handle on the fetch path: the kick follows at once
        # libcurl's sockets live in an epoll set of their own, which the asyncio loop
        # watches as one fd (see _handle_socket).
        self._ep = select.epoll()
        super().initialize(max_clients=0, defaults=defaults, max_body_size=max_body_size)
        self._max_handles = max_clients
        self._free_low = 0  # the fewest free handles since the last trim_idle
        # Transfers that received body bytes during the current socket action.
        self.dirty: list[Transfer] = []
        self._aio = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
        self._aio.add_reader(self._ep.fileno(), self._on_ready)

    def _curl_create(self) -> pycurl.Curl:
        curl = super()._curl_create()
        curl.transfer = None  # type: ignore[attr-defined]  # ours while it runs one of our transfers
        curl.info = None      # type: ignore[attr-defined]  # Tornado's while it runs one of its requests
        return curl

    def close(self) -> None:
        # Our socket registrations go straight to the asyncio loop (see _handle_socket),
        # not through Tornado's add_handler: take them out before the multi goes.
        aio = self._aio
        if not aio.is_closed():
            aio.remove_reader(self._ep.fileno())
        self._ep.close()
        self._fds.clear()
        super().close()

    # -- our transfers: start, kick, finish, abort -------------------------------
    def start_transfer(self, t: "Transfer") -> None:
        """Start ``t`` now if a handle is free (or may be made), else queue it.

        Unlike Tornado's ``fetch_impl`` (queue, then a 0 ms timer), the request goes
        out in this call: after ``add_handle`` we run the socket action that timer
        would have run.  Only ever called from the fetch path, never from inside a
        curl callback, where libcurl forbids calling back into the multi.
        """
        if not self._requests:  # else earlier requests wait for a handle: keep FIFO
            free = self._free_list
            if free:
                curl = free.pop()
                if len(free) < self._free_low:
                    self._free_low = len(free)
            elif len(self._curls) < self._max_handles:
                curl = self._curl_create()
                self._curls.append(curl)
                self._free_low = 0
            else:
                curl = None
            if curl is not None:
                if self._start(curl, t, True):
                    self._kick()
                return
        self._requests.append((t, None, 0.0))  # type: ignore[arg-type]

    def trim_idle(self, keep: int = IDLE_HANDLES_KEPT) -> int:
        """Close the free handles no transfer needed since the last call, beyond ``keep``
        (the longest idle first: the free list is taken from its end).  Returns how many."""
        free = self._free_list
        surplus = min(self._free_low, len(free)) - keep
        if surplus > 0:
            gone = free[:surplus]
            del free[:surplus]
            closed = {id(c) for c in gone}
            self._curls = [c for c in self._curls if id(c) not in closed]
            for c in gone:
                c.close()
            if MALLOC_TRIM is not None:
                MALLOC_TRIM(0)  # give the freed pages back (a few ms, at most once per trim period)
        self._free_low = len(free)
        return max(surplus, 0)

    def _start(self, curl: pycurl.Curl, t: "Transfer", kick: bool) -> bool:
        try:
            self._setup_transfer(curl, t)
        except Exception as exc:
            # As Tornado does when a request's setup fails: the handle goes back and
            # the transfer ends at once.  libcurl refused what we built from the
            # client's request (a NUL in a header or URL, say): the client's fault,
            # never the account's.
            curl.reset()
            self._free_list.append(curl)
            t.abort_err = ProxyError(ErrorKind.INVALID_REQUEST, "the request could not be sent upstream: "
                                     f"libcurl refused it ({type(exc).__name__})")
            _complete(t, _E_ABORTED, 0.0)
            return False
        curl.transfer = t  # type: ignore[attr-defined]
        t.curl = curl
        # libcurl asks for a 0 ms timer from inside add_handle; on the fetch path the
        # kick right after does what that timer would, so none is made (_set_timeout).
        self._adding = kick
        try:
            self._multi.add_handle(curl)
        except pycurl.error:
            log.exception("curl add_handle failed")
            curl.transfer = None  # type: ignore[attr-defined]
            t.curl = None
            curl.reset()
            self._free_list.append(curl)
            _complete(t, _E_ABORTED, 0.0)
            return False
        finally:
            self._adding = False
        return True

    def _kick(self) -> None:
        """Drive a just-added transfer now, as the 0 ms timer would on the next turn."""
        multi = self._multi
        while True:
            try:
                ret = multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)[0]
            except pycurl.error as e:
                ret = e.args[0]
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        self._finish_pending_requests()

    def _finish_transfer(self, curl: pycurl.Curl, errno: int | None) -> None:
        """End one of ours: only what Upstream.wait needs, then the handle goes back."""
        t: Transfer = curl.transfer  # type: ignore[attr-defined]
        curl.transfer = None  # type: ignore[attr-defined]
        t.curl = None
        self._multi.remove_handle(curl)  # also drops any completion message still queued for it
        st = curl.getinfo(pycurl.STARTTRANSFER_TIME)  # Tornado's time_info["starttransfer"]
        curl.reset()  # also lets go of our callbacks (bound to t) and the request body
        self._free_list.append(curl)
        _complete(t, errno, st)

    def _finish_pending_requests(self) -> None:
        # Every socket action (socket event, timer, kick) ends here: hand each streaming
        # transfer what it received in that action, in one piece, before any transfer
        # that completed in it is finished.
        if self.dirty:
            self._deliver()
        info_read = self._multi.info_read
        while True:
            num_q, ok_list, err_list = info_read()
            for curl in ok_list:
                if curl.transfer is not None:
                    self._finish_transfer(curl, None)
                elif curl.info is not None:
                    self._finish(curl)
            for curl, errnum, errmsg in err_list:
                if curl.transfer is not None:
                    self._finish_transfer(curl, errnum)
                elif curl.info is not None:
                    self._finish(curl, errnum, errmsg)
            if num_q == 0:
                break
        if self._requests:
            self._process_queue()

    def _process_queue(self) -> None:
        """Start queued requests, oldest first, while handles are free or may be made."""
        requests = self._requests
        free = self._free_list
        while requests:
            if not free:
                if len(self._curls) >= self._max_handles:
                    return
                curl = self._curl_create()
                self._curls.append(curl)
                free.append(curl)
            self._free_low = 0  # (a queue: every free handle is needed)
            if requests[0][1] is None:  # one of our transfers
                # Not kicked: this may run inside a socket action's aftermath or an abort;
                # libcurl's 0 ms timer starts it on the next turn, as Tornado would.
                self._start(free.pop(), requests.popleft()[0], False)  # type: ignore[arg-type]
                continue
            # An ordinary HTTPRequest: Tornado's own _process_queue starts it (curl.info,
            # its setup, its error handling), handed a queue of just this request.
            one = collections.deque((requests.popleft(),))
            self._requests = one
            try:
                super()._process_queue()
            finally:
                self._requests = requests
                if one:  # (a fetch made by a callback while it ran)
                    requests.extend(one)

    def abort(self, transfer: "Transfer") -> None:
        """Stop ``transfer``, running or queued.  Never from inside a curl callback
        (those return 0 instead): removing the handle from the multi is safe here."""
        curl = transfer.curl
        if curl is not None and curl.transfer is transfer:  # type: ignore[attr-defined]
            self._finish_transfer(curl, _E_ABORTED)
            if self._requests:
                self._process_queue()
            return
        # Still queued for a free handle: take it out of the queue.
        requests: collections.deque[Any] = self._requests  # holds our Transfers too
        for item in requests:
            if item[0] is transfer:
                requests.remove(item)
                _complete(transfer, _E_ABORTED, 0.0)
                return

    # -- backpressure ------------------------------------------------------------------
    def pause(self, t: "Transfer") -> None:
        """Stop reading ``t``'s upstream socket: its client is not keeping up.

        What the upstream sends meanwhile waits in the kernel's socket buffers (and
        then the upstream's), not in our memory.  Never from inside a curl callback.
        """
        curl = t.curl
        if curl is None or t.paused or curl.transfer is not t:  # type: ignore[attr-defined]
            return
        try:
            curl.pause(pycurl.PAUSE_RECV)
        except pycurl.error:
            return  # the transfer failed meanwhile: its completion reports it
        t.paused = True

    def resume(self, t: "Transfer") -> None:
        """Read again (the client's buffer has drained).  Never from inside a curl callback."""
        if not t.paused:
            return
        t.paused = False
        t.last_tick = t.client.tick  # the idle timeout counts from now
        curl = t.curl
        if curl is None or curl.transfer is not t:  # type: ignore[attr-defined]
            return
        try:
            # libcurl may hand over what it held back right here (our write callback
            # queues it) and asks for a timer to carry on reading.
            curl.pause(pycurl.PAUSE_CONT)
        except pycurl.error:
            pass  # the transfer failed while paused: its completion reports it
        self._finish_pending_requests()  # deliver what came out of the unpause

    # -- libcurl's callbacks into the event loop ---------------------------------------
    def _set_timeout(self, msecs: int) -> None:
        """libcurl's timer callback, keeping one timer instead of replacing it per call.

        Tornado removes and re-adds its timer on every call, and libcurl calls about
        three times per transfer (0 at add_handle, the connect timeout, -1).  Here a
        timer is only made when nothing is pending or the new deadline is earlier:

        * -1 (no timeout needed) leaves a pending timer alone; it fires harmlessly;
        * a later or equal deadline than the pending one is ignored: the early fire runs
          a socket action that does nothing, and ``_handle_timeout`` then resyncs from
          ``multi.timeout()``, which schedules the real deadline;
        * 0 from inside ``add_handle`` on the fetch path needs no timer: the kick
          (``start_transfer``) runs that socket action right away.
        """
        if msecs < 0 or (self._adding and msecs == 0):
            return
        io_loop = self.io_loop
        when = io_loop.time() + msecs / 1000.0
        if self._timeout is not None:
            if when >= self._timeout_at:
                return
            io_loop.remove_timeout(self._timeout)
        self._timeout_at = when
        self._timeout = io_loop.add_timeout(when, self._handle_timeout)

    def _handle_socket(self, event: int, fd: int, multi: pycurl.CurlMulti, data: Any) -> None:
        """libcurl's socket callback: its sockets go into our own epoll set.

        Tornado registers each socket with the IOLoop and removes it again when libcurl
        is done with it.  libcurl asks for that twice per transfer (the connection and
        the multi's wakeup eventfd), and through asyncio each registration costs object
        churn in its selector on top of the syscall.  In our own ``select.epoll`` it is
        the syscall alone; the asyncio loop watches that epoll's fd (:meth:`_on_ready`).
        A closed fd leaves an epoll set by itself, so an fd libcurl closed and got back
        as a new socket fails an update and is registered afresh, and a repeat of the
        same events for a known fd (libcurl thinks the socket is new) updates it.
        ``self._fds`` maps fd -> libcurl's POLL_* mask (bit 1 in, bit 2 out).
        """
        fds = self._fds
        if event == pycurl.POLL_REMOVE:
            if fds.pop(fd, None) is not None:
                try:
                    self._ep.unregister(fd)
                except OSError:
                    pass  # closed already: epoll forgot it
            return
        mask = _EPOLL_MASK[event]
        if not mask:  # POLL_NONE: known, but not watched for now
            if fds.get(fd):
                try:
                    self._ep.unregister(fd)
                except OSError:
                    pass
            fds[fd] = 0
            return
        if fd in fds:
            try:
                self._ep.modify(fd, mask)
            except FileNotFoundError:
                self._ep.register(fd, mask)
        else:
            try:
                self._ep.register(fd, mask)
            except FileExistsError:
                self._ep.modify(fd, mask)
        fds[fd] = event

    def _on_ready(self) -> None:
        """The asyncio loop's reader callback for our epoll set: drive each ready socket,
        then finish what completed, once for all of them."""
        fds = self._fds
        for fd, ev in self._ep.poll(0):
            want = fds.get(fd, 0)  # (libcurl may have let go of it meanwhile)
            # As asyncio's selector reports them: an error or hang-up wakes both sides.
            action = 0
            if want & pycurl.POLL_IN and ev & ~select.EPOLLOUT:
                action = pycurl.CSELECT_IN
            if want & pycurl.POLL_OUT and ev & ~select.EPOLLIN:
                action |= pycurl.CSELECT_OUT
            if action:
                self._on_socket(fd, action)
        self._finish_pending_requests()

    def _on_socket(self, fd: int, action: int) -> None:
        multi = self._multi
        while True:
            try:
                ret = multi.socket_action(fd, action)[0]
            except pycurl.error as e:
                ret = e.args[0]
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break

    # -- streaming -------------------------------------------------------------------
    def _deliver(self) -> None:
        """One ``on_data`` call per transfer per socket action, not one per HTTP chunk.

        libcurl calls the write function once per chunk of a chunked body, and an
        upstream that frames every SSE event as its own chunk would cost one client
        write (a syscall) per event; here the events of one read go out in one write.
        A handler that fails or whose client has gone aborts its transfer.
        """
        batch = self.dirty
        self.dirty = []
        for t in batch:
            parts = t.pending
            t.pending = []
            if not hand_over(t, parts[0] if len(parts) == 1 else b"".join(parts)):
                self.abort(t)

    def _setup_transfer(self, curl: pycurl.Curl, request: "Transfer") -> None:
        """A lean setup for our own transfers (Tornado's is for its own requests only).

        Tornado's generic setup costs more per request than the rest of our pipeline
        (two dozen options, header objects, a request proxy). The handle was reset()
        after its last transfer, so only what differs from libcurl's defaults is set:
        TLS verification, IPv4/IPv6 and environment proxies keep libcurl's defaults,
        as they do under Tornado's setup.
        """
        req = request.req
        setopt = curl.setopt
        setopt(pycurl.PROTOCOLS, _HTTP_ONLY)
        setopt(pycurl.URL, req.url)
        setopt(pycurl.HTTPHEADER, request.header_lines())
        # Header lines are only collected here (a C call each, no Python frame) and
        # parsed once, when the status is first needed (Transfer.parse_head).
        setopt(pycurl.HEADERFUNCTION, request.head.append)
        setopt(pycurl.WRITEFUNCTION, request._write)
        setopt(pycurl.CONNECTTIMEOUT_MS, request.connect_ms)
        setopt(pycurl.USERAGENT, request.client.user_agent)
        setopt(pycurl.ENCODING, "gzip,deflate")
        setopt(pycurl.NOSIGNAL, 1)
        # A body in several writes must not wait on the upstream's delayed ACK on a
        # reused connection (libcurl's default since 7.50.2; older ones had Nagle on).
        setopt(pycurl.TCP_NODELAY, 1)
        # libcurl's default 64 KiB send buffer per transfer is most of a slow stream's
        # memory; request bodies go out fine in 16 KiB pieces.
        setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
        if request.client_proxy:
            setopt(pycurl.PROXY, request.client_proxy)
        method = req.method
        if req.body is not None:
            setopt(pycurl.POSTFIELDSIZE, len(req.body))
            setopt(pycurl.POSTFIELDS, req.body)  # pycurl keeps the bytes alive for the transfer
            if method != "POST":
                setopt(pycurl.CUSTOMREQUEST, method)
        elif method == "HEAD":
            setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            setopt(pycurl.CUSTOMREQUEST, method)


def hand_over(t: "Transfer", data: bytes) -> bool:
    """Give streamed bytes to ``t.on_data``; False: the transfer is to be aborted (the
    client has gone, or the handler failed: ``t.abort_kind`` / ``t.abort_err`` say)."""
    if t.abort_kind is not None or t.abort_err is not None or t.on_data is None:
        return True  # ending already
    try:
        keep_going = t.on_data(data)
    except ProxyError as err:
        t.abort_err = err
        keep_going = False
    except Exception as exc:  # a bug must not leave the transfer running
        log.exception("stream handler failed")
        t.abort_err = ProxyError(ErrorKind.INTERNAL, f"internal error while streaming: {type(exc).__name__}")
        keep_going = False
    if not keep_going and t.abort_err is None:
        t.abort_kind = ErrorKind.INTERNAL  # client went away
    return keep_going


def _complete(t: "Transfer", errno: int | None, starttransfer: float) -> None:
    """Resolve ``t``'s future with the outcome ``Upstream.wait`` turns into a Result,
    and run ``t.on_done`` with it right away (the awaiting task only wakes up on the
    next IOLoop turn)."""
    fut = t.future
    if fut is not None and not fut.done():
        fut.set_result((errno, starttransfer))
        cb = t.on_done
        if cb is not None:
            t.on_done = None
            try:
                cb(errno, starttransfer)
            except Exception:  # the awaiting task still gets the outcome
                log.exception("transfer completion callback failed")


_HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
_EPOLL_MASK = {pycurl.POLL_NONE: 0, pycurl.POLL_IN: select.EPOLLIN, pycurl.POLL_OUT: select.EPOLLOUT,
               pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT}


class Transfer:
    """One upstream request in flight."""

    __slots__ = ("req", "curl", "status", "headers", "on_data", "body", "streaming",
                 "started", "first_tick", "last_tick", "abort_kind", "abort_err", "first_byte",
                 "idle", "client", "client_proxy", "_header_status", "future", "started_at", "connect_ms",
                 "pending", "paused", "on_done", "head", "room")

    def __init__(self, client: "Upstream", req: UpstreamRequest, on_data: Callable[[bytes], bool] | None,
                 first_byte: float, idle: float) -> None:
        self.client = client
        self.req = req
        self.curl: pycurl.Curl | None = None
        self.status = 0
        self._header_status = 0
        self.headers: dict[str, str] = {}
        self.head: list[bytes] = []  # raw header lines as libcurl hands them over, until read
        self.on_data = on_data
        self.body: list[bytes] = []
        self.room = 0                   # bytes the buffered body may still take (set at the first byte)
        self.pending: list[bytes] = []  # streamed bytes not yet handed to on_data
        self.paused = False             # not reading: the client is behind (GatewayCurlClient.pause)
        self.streaming = False        # decided at the first body byte
        self.started = False          # any body byte seen
        tick = client.tick
        self.first_tick = tick
        self.last_tick = tick
        self.abort_kind: ErrorKind | None = None
        self.abort_err: ProxyError | None = None
        self.first_byte = max(1, int(first_byte * TICKS_PER_SECOND)) if first_byte else 0
        self.idle = max(1, int(idle * TICKS_PER_SECOND)) if idle else 0
        self.client_proxy: str | None = None
        self.connect_ms = 10000
        self.future: Any = None
        self.started_at = 0.0
        # Called with (errno, starttransfer) as the transfer completes, before the task
        # awaiting it resumes: see Upstream.result.
        self.on_done: Callable[[int | None, float], None] | None = None

    # -- curl callbacks (run synchronously inside curl's socket action) --------
    def parse_head(self) -> int:
        """Read the header lines received so far: the status of the last header block
        (100 Continue, a proxy's CONNECT answer and redirects come with blocks of their
        own; a new block starts over) and its headers.  Returns the status (0: none yet)."""
        head = self.head
        for line in head:
            if line[:5] == b"HTTP/":
                parts = line.split(b" ", 2)
                try:
                    self._header_status = int(parts[1])
                except (IndexError, ValueError):
                    self._header_status = 0
                self.headers = {}
                continue
            name, sep, value = line.partition(b":")
            if sep:
                self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        # The lines read go: a stream held for minutes keeps only the parsed dict
        # (libcurl appends any later line, a trailer, to the same list).
        head.clear()
        return self._header_status

    def too_large(self) -> ProxyError:
        """The error for an answer over the body cap (error bodies have their own)."""
        ok = 200 <= self.status < 300
        cap = self.client.max_body_bytes if ok else self.client.max_error_bytes
        return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                          f"upstream {'answer' if ok else f'error body (status {self.status})'} is larger than "
                          f"the gateway's limit of {cap} bytes")
    def _write(self, data: bytes) -> int | None:
        self.last_tick = self.client.tick
        if not self.started:
            self.started = True
            self.status = self.parse_head()
            ok = 200 <= self.status < 300
            self.streaming = self.on_data is not None and ok
            self.room = self.client.max_body_bytes if ok else self.client.max_error_bytes
        if self.streaming:
            # Delivered at the end of this socket action (GatewayCurlClient._deliver).
            if self.abort_kind is not None or self.abort_err is not None:
                return 0
            pending = self.pending
            if not pending:
                self.client.http.dirty.append(self)
            pending.append(data)
            return None
        self.room -= len(data)
        if self.room < 0:
            # A rogue or broken upstream must not fill our memory: stop reading now.
            self.abort_err = self.too_large()
            self.body = []
            return 0  # curl ends the transfer (CURLE_WRITE_ERROR)
        self.body.append(data)
        return None

    def header_lines(self) -> list[bytes]:
        # "Expect:" and "Pragma:" with no value stop libcurl from adding its own
        # (100-continue adds a round trip; no-cache means nothing to an API).
        out = [b"Expect:", b"Pragma:"]
        for k, v in self.req.headers.items():
            line = f"{k}: {v}".encode("latin-1")
            if b"\r" in line or b"\n" in line:
                raise ProxyError(ErrorKind.INTERNAL, f"illegal character in upstream header {k!r}")
            out.append(line)
        return out

    # -- control ---------------------------------------------------------------
    def abort(self, kind: ErrorKind) -> None:
        """Stop the transfer from outside curl (client gone, timeout)."""
        if self.abort_kind is None:
            self.abort_kind = kind
        self.client.http.abort(self)


class Result:
    __slots__ = ("status", "headers", "body", "error", "ttfb")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, error: ProxyError | None,
                 ttfb: float | None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error
        self.ttfb = ttfb


class Upstream:
    """The process-wide upstream client and its timeout sweeper."""

    def __init__(self, max_clients: int = 10000, user_agent: str = "tornado-proxy", *,
                 max_body_bytes: int = 64 << 20, max_error_bytes: int = 1 << 20) -> None:
        self.max_body_bytes = max_body_bytes    # a buffered (non-streamed) 2xx answer
        self.max_error_bytes = max_error_bytes  # a buffered error body
        self.http = self._client(max_clients)
        self._aio = self.http._aio  # the loop the curl client (one per IOLoop) runs on
        self.user_agent = user_agent
        self.tick = 0
        self.active: set[Transfer] = set()
        self._sweeper = PeriodicCallback(self._sweep, 1000 / TICKS_PER_SECOND)
        self._sweeper.start()

    def _client(self, max_clients: int) -> Any:
        """The curl client our transfers run on: it starts, aborts, pauses and resumes them
        (``start_transfer``, ``abort``, ``pause``, ``resume``)."""
        AsyncHTTPClient.configure(GatewayCurlClient, max_clients=max_clients)
        return AsyncHTTPClient()

    def close(self) -> None:
        self._sweeper.stop()

    def abort_all(self, err: ProxyError) -> int:
        """End every transfer in flight or queued with ``err`` (the drain deadline):
        each request then fails as it would on that upstream error."""
        doomed = list(self.active)
        for t in doomed:
            if t.abort_err is None:
                t.abort_err = err
            self.http.abort(t)
        return len(doomed)

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        if tick % (TRIM_SECONDS * TICKS_PER_SECOND) == 0:
            trim = getattr(self.http, "trim_idle", None)  # (ours; Tornado's client keeps all)
            if trim is not None:
                trim()
        expired: list[tuple[Transfer, ErrorKind]] = []
        for t in self.active:
            if not t.started:
                if t.first_byte and tick - t.first_tick >= t.first_byte:
                    expired.append((t, ErrorKind.FIRST_BYTE_TIMEOUT))
            elif t.idle and not t.paused and tick - t.last_tick >= t.idle:
                expired.append((t, ErrorKind.IDLE_TIMEOUT))
        for t, kind in expired:
            t.abort(kind)

    def start(self, req: UpstreamRequest, *, on_data: Callable[[bytes], bool] | None = None,
              connect_timeout: float = 10.0, first_byte: float = 120.0, idle: float = 120.0,
              proxy: str | None = None) -> Transfer:
        """Send ``req``; ``await upstream.wait(transfer)`` for the result.

        With ``on_data``, a 2xx body is handed to it as it arrives (return False to
        abort); anything else is buffered into ``Result.body``.
        """
        t = Transfer(self, req, on_data, first_byte, idle)
        t.connect_ms = int(connect_timeout * 1000)
        t.client_proxy = proxy
        aio = self._aio
        t.started_at = aio.time()  # = IOLoop.time()
        t.future = aio.create_future()
        self.active.add(t)
        # Straight to the curl client: no HTTPRequest, no request proxy, sent in this call
        # when a handle is free (GatewayCurlClient.start_transfer).
        # No total timeout (streams are long): first-byte and idle are the sweeper's.
        self.http.start_transfer(t)
        return t

    async def wait(self, t: Transfer) -> Result:
        """The outcome of a transfer.  Never raises for transport problems: ``Result.error`` says."""
        try:
            # (curl's errno or None, libcurl's STARTTRANSFER_TIME or 0.0): see
            # GatewayCurlClient._finish_transfer.  Errno 42 also stands for "taken out of
            # the queue by abort" and "setup failed", as the curl client reported them.
            errno, st = await t.future
        finally:
            self.active.discard(t)
            # Transfer -> future -> (its awaiting task, until resolved) -> Transfer: drop the
            # link so nothing can keep the whole request (handler, connection, stream)
            # alive until the slowest GC pass.  (The outcome itself is a plain tuple; the
            # curl.transfer <-> t.curl links are cut in _finish_transfer.)
            t.future = None
        return self.result(t, errno, st)

    def result(self, t: Transfer, errno: int | None, st: float) -> Result:
        """The Result of a completed transfer (what ``wait`` returns), for ``on_done``."""
        ttfb = float(st) if st else self._aio.time() - t.started_at
        # (also any header lines after the body: trailers)
        status = t.parse_head() if t.head else t._header_status
        status = t.status or status
        body = t.body
        return Result(status, t.headers, body[0] if len(body) == 1 else b"".join(body), self._error(t, errno), ttfb)

    async def fetch(self, req: UpstreamRequest, **kw: Any) -> Result:
        return await self.wait(self.start(req, **kw))

    def _error(self, t: Transfer, errno: int | None) -> ProxyError | None:
        if t.abort_err is not None:
            return t.abort_err
        if t.abort_kind is ErrorKind.FIRST_BYTE_TIMEOUT:
            return ProxyError(ErrorKind.FIRST_BYTE_TIMEOUT, "upstream did not answer within the first-byte timeout")
        if t.abort_kind is ErrorKind.IDLE_TIMEOUT:
            return ProxyError(ErrorKind.IDLE_TIMEOUT, "upstream stream stalled past the idle timeout")
        if t.abort_kind is not None:
            return ProxyError(t.abort_kind, "transfer aborted: the client went away")
        if errno is None:
            return None
        host = _host_of(t.req.url)
        if errno == _E_URL_MALFORMAT:
            return ProxyError(ErrorKind.INVALID_REQUEST, "the request could not be sent upstream: its URL is malformed")
        if errno in _E_COULDNT_RESOLVE:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"cannot resolve upstream host {host}")
        if errno == _E_COULDNT_CONNECT:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"cannot connect to upstream {host}")
        if errno == _E_OPERATION_TIMEDOUT:
            if not t.started and not t.parse_head():
                return ProxyError(ErrorKind.CONNECT_TIMEOUT, f"timed out connecting to upstream {host}")
            return ProxyError(ErrorKind.IDLE_TIMEOUT, f"upstream {host} timed out")
        if errno in _E_SSL:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"TLS error talking to upstream {host}")
        if errno in _E_CUT:
            if t.started or t.parse_head():
                return ProxyError(ErrorKind.UPSTREAM_STREAM_CUT, f"upstream {host} closed the connection mid-response")
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"upstream {host} closed the connection without answering")
        return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"upstream {host} transport error (curl {errno})")


def _host_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1]

