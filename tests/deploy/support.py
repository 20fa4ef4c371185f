"""Shared by the deploy tests: the gateway as a real process, the tools they need, the
Dockerfile and PromQL readers, and a gateway with traffic (errors included) to scrape."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def need_tool(name: str) -> str:
    """The tool's path, or skip the test saying what is missing and how to get it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: run deploy/ci-deps.sh (as root) to install it"
        print(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment minus what would change how a gateway starts."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH") and not k.startswith("TORNADO_PROXY_")}
    env.update(extra)
    return env


class Process:
    """A gateway (or any) process whose stderr lines are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str], **popen: Any) -> None:
        self.argv = argv
        # A session (and process group) of its own: cleanup reaches workers a dead parent left.
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, **popen)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(text in line for line in self.lines) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} x{count} not seen in stderr of {self.argv}:\n{self.stderr}")

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """Stop whatever a test left running: its process group, workers a dead parent left
        included (those are found by group and command line, so a reused id is never hit)."""
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            for pid in _group_members(self.pid, self.argv):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)
        self._reader.join(5)


def _group_members(pgid: int, argv: list[str]) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid and argv[-1].encode() in cmdline:
            found.append(int(d.name))
    return found


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    return _children(pid)


def wait_http(url: str, timeout: float = 20.0, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except (OSError, urllib.error.HTTPError):
            if proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"exited with {proc.proc.returncode} before {url} answered:\n{proc.stderr}")
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout} s")


_HELD: dict[Path, Any] = {}  # users file -> its open file, shared-locked while this process may use the build


def shared_build(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``build`` fills once, shared by the xdist workers of this run: the first to
    come builds it under a lock, the others wait and reuse it.  Each process holds a shared
    lock on ``<name>.users`` while it may use the folder; the last to finish removes it
    (release_shared_builds, from conftest.py).  World-readable, for a gateway run as
    another user."""
    import fcntl
    import tempfile

    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the controller's, shared by every worker
    users = base / f"{name}.users"
    if users not in _HELD:
        f = open(users, "a")
        fcntl.flock(f, fcntl.LOCK_SH)
        _HELD[users] = f
    record = base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            done = json.loads(record.read_text())
            if not done["ok"]:
                pytest.fail(f"building {name} failed in another worker:\n{done['error']}", pytrace=False)
            if Path(done["root"]).is_dir():
                return Path(done["root"])
        root = Path(tempfile.mkdtemp(prefix=f"tornado-proxy-{name}-"))
        root.chmod(0o755)
        try:
            build(root)
        except BaseException as exc:
            record.write_text(json.dumps({"ok": False, "root": str(root), "error": str(exc)}))
            raise
        record.write_text(json.dumps({"ok": True, "root": str(root)}))
        return root


def release_shared_builds() -> None:
    """This process is done: if no other holds the folder, remove it."""
    import fcntl

    for users, f in list(_HELD.items()):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only once every other user let go
        except OSError:
            f.close()  # another process still uses it: the last one removes it
            continue
        record = users.with_suffix(".json")
        try:
            shutil.rmtree(json.loads(record.read_text())["root"], ignore_errors=True)
            record.unlink()
        except (OSError, ValueError, KeyError):
            pass
        f.close()
    _HELD.clear()


# -- the Dockerfile ---------------------------------------------------------------------

@dataclass
class Stage:
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"no {op} in the Dockerfile's final stage"
        return found[-1]


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    """Instructions per stage: continuation lines joined, comments and the parser directive dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, args = line.strip().partition(" ")
        op, args = op.upper(), " ".join(args.split())
        if op == "FROM":
            m = re.search(r"\bAS\s+(\S+)$", args, re.I)
            stages.append(Stage(m.group(1) if m else None))
        elif stages:
            stages[-1].instructions.append((op, args))
    return stages


def exec_form(args: str, what: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form would put /bin/sh -c in front of
    the server and swallow SIGTERM."""
    try:
        argv = json.loads(args)
    except ValueError:
        raise AssertionError(f"{what} is not in exec form (a JSON array): {args}") from None
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), what
    return argv


def dockerfile_env(stage: Stage, base_path: str) -> dict[str, str]:
    env = {"PATH": base_path}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            k, _, v = word.partition("=")
            env[k] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), v)
    return env


def docker_context(dest: Path) -> list[str]:
    """Copy what `docker build .` would send (the checkout less .dockerignore) to ``dest``."""
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.lstrip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) are not handled here"
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode().split("\0")
    from fnmatch import fnmatchcase

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            for p in patterns:
                if fnmatchcase(prefix, p) or (p.startswith("**/") and fnmatchcase(parts[i - 1], p[3:])):
                    return True
        return False

    kept = []
    for rel in out:
        if rel and not ignored(rel) and (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
            kept.append(rel)
    return kept


# -- PromQL -------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


@dataclass
class Query:
    metrics: set[str]
    labels: set[str]        # in by/without/on/ignoring/group_* clauses and in matchers


def parse_promql(expr: str) -> Query:
    """The metric names and label names an expression uses.  Not a full PromQL parser:
    the syntax itself is checked by promtool; this only has to find the names."""
    labels: set[str] = set()
    no_strings = _STRING.sub('""', expr)
    for m in _MATCHERS.finditer(no_strings):
        labels.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
    rest = _MATCHERS.sub(" ", no_strings)
    for m in _GROUPING.finditer(rest):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    rest = _GROUPING.sub(" ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    metrics = set()
    for m in _IDENT.finditer(rest):
        name = m.group(1)
        after = rest[m.end():].lstrip()
        if name.lower() in _KEYWORDS or after.startswith("("):
            continue
        metrics.add(name)
    return Query(metrics, labels)


GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus sees it: Grafana's variables replaced."""
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str, list[str]]]:
    """(where, expr, legend label names) for every panel target and query variable."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str, list[str]]]:
        for p in panels:
            yield from walk(p.get("panels") or [])
            for t in p.get("targets") or []:
                legend = re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat") or "")
                yield f"panel {p.get('title')!r} target {t.get('refId')}", t["expr"], legend
    yield from walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: only label_values(metric, label) is handled: {q}"
            yield f"variable {v['name']}", m.group(1), [m.group(2)]


def exposition(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text format."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert m, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


# -- a gateway with traffic ---------------------------------------------------------------

def chat(port: int, model: str, stream: bool = False, **headers: str) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "three little words"}],
                       "stream": stream}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


OK_BODY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
QUOTA = {"x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "9000"}


@dataclass
class Scraped:
    texts: list[str]
    names: dict[str, set[str]]


def scrape_after_traffic(workers: int, tmp: Path) -> Scraped:
    """Start the CLI with ``workers`` workers, an echo model and a fake upstream with
    several accounts (an OAuth one among them), send traffic that succeeds, streams,
    fails upstream, times out, gets rate limited and gets an account disabled, then
    return /metrics."""
    from tests.e2e.harness import LoopThread, Reply
    from tornado_proxy.accounts.file import AccountsFile

    lt = LoopThread()
    try:
        up = lt.upstream()
        keyed: dict[str, Callable[[], Reply]] = {}

        def pick(rec: Any) -> Reply | None:
            make = keyed.get(rec.headers.get("authorization", "").removeprefix("Bearer "))
            return make() if make else None
        up.handler = pick
        up.default = Reply.json(OK_BODY, headers=QUOTA)
        accounts = tmp / "accounts.json"
        AccountsFile(str(accounts)).upsert({"id": "o1", "provider": "up", "refresh_token": "rt-0",
                                            "access_token": "at-0", "expires_at": time.time() + 7200})
        port = free_port()
        cfg = {"server": {"port": port, "host": "127.0.0.1", "drain_seconds": 5, "admin_token": "adm-token-1"},
               "accounts_file": str(accounts),
               "providers": [{"name": "echo", "type": "echo"},
                             {"name": "up", "type": "openai", "base_url": up.url + "/v1",
                              "timeouts": {"connect": 2, "first_byte": 0.5, "idle": 2},
                              "scheduler": {"oauth": {"token_url": up.url + "/oauth/token", "client_id": "c1"},
                                            "max_tries": 2},
                              "accounts": [{"id": "a1", "api_key": "key-a1"}, {"id": "a2", "api_key": "key-a2"},
                                           {"id": "a3", "api_key": "key-a3"}]}],
               "models": [{"id": "echo", "provider": "echo"},
                          {"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]}
        conf = tmp / "config.json"
        conf.write_text(json.dumps(cfg))
        p = Process([sys.executable, "-m", "tornado_proxy", "--config", str(conf), "--workers", str(workers)],
                    clean_env(), cwd=str(ROOT))
        try:
            p.wait_for("listening on", count=workers)
            assert chat(port, "echo") == 200 and chat(port, "echo", stream=True) == 200
            assert chat(port, "nope") == 404
            for _ in range(6):
                assert chat(port, "m") == 200
                assert chat(port, "m", stream=True) in (200,)
            # a3's key is revoked (402 disables at once); a2 times out, then rate limits
            keyed["key-a3"] = lambda: Reply.json({"error": {"message": "insufficient credit"}}, status=402)
            keyed["key-a2"] = lambda: Reply(200, {"Content-Type": "application/json"}, json.dumps(OK_BODY).encode(),
                                            first_delay=1.0)
            keyed["at-0"] = lambda: Reply.json({"error": {"message": "boom"}}, status=500)
            for _ in range(8):
                chat(port, "m")
            keyed["key-a1"] = lambda: Reply.json({"error": {"message": "slow down"}}, status=429,
                                                 headers={"retry-after": "600"})
            for _ in range(4):
                chat(port, "m")
            # Each scrape is answered by one worker: its account collector reads its own
            # scheduler, so take several and keep them all.
            time.sleep(0.2)  # a worker may record a request a moment after its answer went out
            texts = [urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                     for _ in range(4 * workers)]
            p.proc.send_signal(signal.SIGTERM)
            assert p.wait() == 0, p.stderr
        finally:
            p.kill()
        names: dict[str, set[str]] = {}
        for t in texts:
            for k, v in exposition(t).items():
                names.setdefault(k, set()).update(v)
        return Scraped(texts, names)
    finally:
        lt.cleanup()
        lt.loop.call_soon_threadsafe(lt.loop.stop)
