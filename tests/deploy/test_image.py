"""What the Dockerfile does, tested without Docker (no daemon on these machines).

Read from the Dockerfile, so the test cannot drift from it: the build stage's `pip wheel`
and the runtime stage's venv + `pip install` lines (run through sh with the image's paths
mapped to a temporary folder), the COPY of the default config, USER, ENV, WORKDIR, VOLUME,
EXPOSE, ENTRYPOINT + CMD and HEALTHCHECK. The gateway then runs from the wheel installed in
a fresh venv, as the image's user (uid and gid from USER; when the test runs as root), with
exactly the exec-form command line the container would run; the HEALTHCHECK command must
pass, SIGTERM to that very process must drain a stream in flight and exit 0.

Not covered (Docker itself): the base image, apt-get, the user's /etc/passwd entry, the
image's Python version (the venv here uses the test's Python).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from tornado_proxy.cli import default_workers

from .support import (ROOT, Process, Stage, docker_context, dockerfile_env, dockerfile_stages, exec_form, free_port,
                      shared_build, wait_http)

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Image:
    """The image as the Dockerfile describes it, built (its pip lines run) under ``root``."""
    root: Path
    final: Stage
    venv: str                     # image paths: the venv, the config folder, the volume
    etc: str
    volume: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    health_options: dict[str, str]
    uid: int | None               # None: the test is not root and runs it as itself
    gid: int | None
    port: int

    def container(self) -> "Container":
        """What `docker run` starts from: the config folder with the Dockerfile's COPYs and
        an empty state volume owned by the image's user."""
        d = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        d.chmod(0o755)
        c = Container(self, d, {self.venv: self.root / "venv", self.etc: d / "etc", self.volume: d / "state"})
        (d / "etc").mkdir(mode=0o755)
        (d / "state").mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(d / "state", self.uid, self.gid or 0)
        for args in self.final.all("COPY"):
            if "--from" not in args:
                src, dest = shlex.split(args)
                shutil.copy(self.root / "src" / src, c.local(dest))
                os.chmod(c.local(dest), 0o644)
        return c


@dataclass
class Container:
    image: Image
    dir: Path
    paths: dict[str, Path]        # image path -> local folder

    @property
    def etc(self) -> Path:
        return self.paths[self.image.etc]

    @property
    def state(self) -> Path:
        return self.paths[self.image.volume]

    def local(self, s: str) -> str:
        for image_path, here in self.paths.items():
            s = re.sub(re.escape(image_path) + r"(?=/|$|\W)", str(here), s)
        return s

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: self.local(v) for k, v in dockerfile_env(self.image.final, BASE_PATH).items()}
        env.update(LANG="C.UTF-8", HOME=str(self.state), **extra)
        return env

    def as_user(self) -> dict[str, Any]:
        img = self.image
        return {} if img.uid is None else {"user": img.uid, "group": img.gid, "extra_groups": []}

    def argv(self, port: int) -> list[str]:
        """ENTRYPOINT + CMD, the image's paths mapped, and the port moved to a free one."""
        args = [self.local(a) for a in self.image.entrypoint + self.image.cmd]
        return [str(port) if a == str(self.image.port) and args[i - 1] == "--port" else a
                for i, a in enumerate(args)]

    def start(self, port: int, **env: str) -> Process:
        return Process(self.argv(port), self.env(**env), cwd=str(self.state), **self.as_user())

    def run_healthcheck(self, port: int) -> subprocess.CompletedProcess[str]:
        argv = [a.replace(f":{self.image.port}/", f":{port}/") for a in self.image.healthcheck]
        exe = shutil.which(argv[0], path=self.env()["PATH"])
        assert exe, f"HEALTHCHECK's {argv[0]} is not on the image's PATH"
        # Only what the Dockerfile installs counts: the slim base image has no curl or wget.
        assert Path(exe).parent == self.paths[self.image.venv] / "bin", f"HEALTHCHECK runs {exe}, not the image's"
        timeout = float(self.image.health_options.get("timeout", "30s").rstrip("s"))
        return subprocess.run([exe, *argv[1:]], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, **self.as_user())


def _world_usable(path: str) -> bool:
    p = Path(os.path.realpath(path))
    return all(d.stat().st_mode & 0o001 for d in (p, *p.parents))


def base_python() -> str | None:
    """A Python (3.10 or later, with venv) that another user may run: the venv the gateway
    runs from points at it, and this test's own Python may sit under a private home."""
    code = ("import sys, sysconfig, ensurepip, venv; "
            "print(sysconfig.get_paths()['stdlib']); print(sys.version_info >= (3, 10))")
    for c in (getattr(sys, "_base_executable", sys.executable), sys.executable, "/usr/local/bin/python3",
              "/usr/bin/python3"):
        if not (os.path.exists(c) and _world_usable(c)):
            continue
        r = subprocess.run([c, "-c", code], capture_output=True, text=True, timeout=60)
        lines = r.stdout.split()
        if r.returncode == 0 and lines[1] == "True" and _world_usable(lines[0]):
            return c
    return None


def read_dockerfile() -> tuple[Stage, Stage, dict[str, str], tuple[int | None, int | None, str]]:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, final = stages[0], stages[-1]
    path_env = dockerfile_env(final, BASE_PATH)["PATH"]
    venv = str(Path(path_env.split(":")[0]).parent)          # ENV PATH=/opt/tornado-proxy/bin:...
    volume = json.loads(final.last("VOLUME"))[0]
    config = next(a for a in json.loads(final.last("CMD")) if a.endswith(".json"))
    places = {"venv": venv, "etc": str(Path(config).parent), "volume": volume}
    assert sorted(places.values()) == ["/etc/tornado-proxy", "/opt/tornado-proxy", "/var/lib/tornado-proxy"]
    user = final.last("USER").split(":")
    assert user[0].isdigit() and user[0] != "0", "USER: a numeric, non-root uid (Kubernetes' runAsNonRoot)"
    if os.geteuid() != 0:
        return build, final, places, (None, None, f"not root: it runs as this test's user, not as USER {user[0]}")
    return build, final, places, (int(user[0]), int(user[1] if len(user) > 1 else user[0]), "")


def build(root: Path) -> None:
    """The Dockerfile's pip lines, as `docker build` runs them, into ``root``."""
    build_stage, final, places, (uid, _, _) = read_dockerfile()
    paths = {places["venv"]: root / "venv", "/wheels": root / "wheels"}
    src = root / "src"  # the build context, as `docker build .` sends it (.dockerignore applied)
    src.mkdir()
    assert "setup.cfg" in docker_context(src)
    python = base_python() if uid is not None else sys.executable
    # `python` and `pip` of the base image: a venv of a Python the image's user may run.
    subprocess.run([python or sys.executable, "-m", "venv", str(root / "base")], check=True, timeout=300)
    shim = root / "shim"
    shim.mkdir()
    (shim / "python").symlink_to(root / "base" / "bin" / "python")
    (shim / "pip").symlink_to(root / "base" / "bin" / "pip")
    (root / "python").write_text(python or "")

    def run(stage: Stage, cwd: Path) -> None:
        for args in stage.all("RUN"):
            if "pip" not in args:
                continue  # apt-get, useradd: the base image's business, not ours
            line = re.sub(r"--mount=\S+\s+", "", args).replace("--no-cache-dir", "")  # the local pip cache may serve
            for image_path, here in paths.items():
                line = re.sub(re.escape(image_path) + r"(?=/|\s|$)", str(here), line)
            r = subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
            assert r.returncode == 0, f"RUN {args}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"

    run(build_stage, src)
    assert list((root / "wheels").glob("tornado_proxy-*.whl")), "the build stage made no wheel of ours"
    run(final, root)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    t0 = time.monotonic()
    root = shared_build(tmp_path_factory, "image", build)  # once per run, whichever xdist worker comes first
    print(f"wheel built and installed in a fresh venv in {time.monotonic() - t0:.1f} s")
    _, final, places, (uid, gid, why) = read_dockerfile()
    if uid is not None and not (root / "python").read_text():
        uid = gid = None
        why = "no Python here that another user may run: it runs as root"
    if why:
        print(why)
    entrypoint = exec_form(final.last("ENTRYPOINT"), "ENTRYPOINT")
    cmd = exec_form(final.last("CMD"), "CMD")
    hc = final.last("HEALTHCHECK")
    opts = dict(re.findall(r"--([\w-]+)=(\S+)", hc.split(" CMD ", 1)[0]))
    healthcheck = exec_form(hc.split(" CMD ", 1)[1], "HEALTHCHECK CMD")
    port = int(cmd[cmd.index("--port") + 1])
    assert final.last("EXPOSE") == str(port), "EXPOSE and CMD's --port differ"
    assert any(f"127.0.0.1:{port}/health" in a for a in healthcheck), "HEALTHCHECK probes another port"
    return Image(root, final, places["venv"], places["etc"], places["volume"], entrypoint, cmd, healthcheck,
                 opts, uid, gid, port)


@pytest.fixture
def container(image: Image) -> Iterator[Container]:
    c = image.container()
    try:
        yield c
    finally:
        shutil.rmtree(c.dir, ignore_errors=True)


def test_the_image_installs_the_built_wheel_not_the_source_tree(image: Image) -> None:
    py = image.root / "venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import tornado_proxy, providers; print(tornado_proxy.__file__)"],
                         capture_output=True, text=True, cwd="/", check=True).stdout.strip()
    assert out.startswith(str(image.root / "venv" / "lib")), out
    direct = list((image.root / "venv" / "lib").glob("python*/site-packages/tornado_proxy-*.dist-info/direct_url.json"))
    assert not any('"editable": true' in p.read_text() for p in direct), "an editable install"


def test_the_entrypoint_runs_as_the_image_user_and_passes_its_healthcheck(image: Image, container: Container) -> None:
    """The image as shipped (its own default config, no mounts): the HEALTHCHECK passes once
    it listens and fails once it is gone; one worker per CPU the cgroup allows."""
    port = free_port()
    assert container.run_healthcheck(port).returncode != 0, "the healthcheck passes with nothing listening"
    p = container.start(port)
    try:
        workers = default_workers()
        p.wait_for("listening on", count=workers)
        deadline = time.monotonic() + float(image.health_options.get("start-period", "0s").rstrip("s") or 0) + 5
        while (r := container.run_healthcheck(port)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.returncode == 0, r.stderr
        status = Path(f"/proc/{p.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()  # type: ignore[union-attr]
        assert set(uids) == {str(image.uid if image.uid is not None else os.geteuid())}
        assert (f"{workers} workers on" in p.stderr) == (workers > 1)
        assert f"0.0.0.0:{port}" in p.stderr
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        p.kill()
    assert container.run_healthcheck(port).returncode != 0


def test_sigterm_to_the_entrypoint_drains_a_stream_then_exits_0(image: Image, container: Container,
                                                               harness: Any) -> None:
    """A config mounted over the default one, secrets from the environment, the accounts
    file in the state volume: an admin disable is saved there by the image's user, a stream
    in flight when SIGTERM reaches the entrypoint's process finishes, and it exits 0."""
    from tests.e2e.harness import Reply

    etc, state = container.etc, container.state
    up = harness.upstream()
    up.default = Reply.sse_file("openai/text.sse", delay=0.15)
    port = free_port()
    (etc / "config.json").write_text(json.dumps({
        "server": {"drain_seconds": 20, "admin_token": "${TP_ADMIN_TOKEN}", "log_format": "json"},
        "accounts_file": container.local("/var/lib/tornado-proxy/accounts.json"),  # as the mounted file says it
        "providers": [{"name": "up", "type": "openai", "base_url": up.url + "/v1",
                       "accounts": [{"id": "a1", "api_key": "${UP_KEY_1}"}, {"id": "a2", "api_key": "${UP_KEY_2}"}]}],
        "models": [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]}))
    secrets = {"UP_KEY_1": "sk-upstream-secret-one-1111", "UP_KEY_2": "sk-upstream-secret-two-2222",
               "TP_ADMIN_TOKEN": "admin-token-secret-3333"}
    p = container.start(port, **secrets)
    try:
        workers = default_workers()
        p.wait_for("listening on", count=workers)
        wait_http(f"http://127.0.0.1:{port}/health", proc=p)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/accounts/a2/disable", data=b"{}", method="POST",
                                     headers={"Authorization": "Bearer " + secrets["TP_ADMIN_TOKEN"]})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        saved = state / "accounts.json"
        deadline = time.monotonic() + 5
        while not (saved.exists() and "a2" in saved.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        st = saved.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (image.uid if image.uid is not None else os.geteuid(), 0o600)
        entry = next(a for a in json.loads(saved.read_text())["accounts"] if a["id"] == "a2")
        assert entry["disabled"] is True and "api_key" not in entry

        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        stream = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        it = iter(stream)
        first = next(it)
        p.proc.send_signal(signal.SIGTERM)  # the entrypoint's own process: what `docker stop` signals
        rest = "".join(ch.choices[0].delta.content or "" for ch in it if ch.choices)
        assert (first.choices[0].delta.content or "") + rest == "Hello! How can I help you today?"
        assert p.wait(30) == 0, p.stderr
    finally:
        p.kill()
    assert sum("drained; exiting" in line for line in p.lines) == workers
    assert {r.headers["authorization"] for r in up.requests} == {"Bearer " + secrets["UP_KEY_1"]}
    for value in secrets.values():
        assert value not in p.stderr and value not in (etc / "config.json").read_text()


def test_the_installed_wheel_checks_every_shipped_config_and_every_provider_type(image: Image,
                                                                                 tmp_path: Path) -> None:
    """The packaging faults of issue #14 (a package left out of the wheel, a provider reading
    its options schema from the source tree) only show in an installed wheel: check every
    shipped config, and one provider of each type with options, with the installed binary."""
    exe = image.root / "venv" / "bin" / "tornado-proxy"
    share = list((image.root / "venv").glob("share/tornado-proxy/conf/*.json"))
    assert sorted(p.name for p in share) == sorted(p.name for p in (ROOT / "conf").glob("*.json"))
    for conf in share:
        names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", conf.read_text()))
        env = {**{n: f"dummy-{n.lower()}" for n in names}, "PATH": os.environ["PATH"]}
        for n in names:
            if n.endswith("_URL"):
                env[n] = "http://127.0.0.1:9"
        r = subprocess.run([str(exe), "--check-config", str(conf)], capture_output=True, text=True, env=env,
                           cwd="/", timeout=60)
        assert r.returncode == 0, f"{conf.name}: {r.stdout}{r.stderr}"
    providers = [{"name": t, "type": t, "base_url": "http://127.0.0.1:9", "accounts": [{"id": f"a-{t}", "api_key": "k"}],
                  "options": {}} for t in ("openai", "anthropic", "openai-responses", "gemini")]
    providers.append({"name": "bedrock", "type": "bedrock", "options": {"region": "us-east-1"},
                      "accounts": [{"id": "b", "aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "s"}]})
    cfg = tmp_path / "all.json"
    cfg.write_text(json.dumps({"providers": providers,
                               "models": [{"id": f"m-{p['name']}", "provider": p["name"]} for p in providers]}))
    r = subprocess.run([str(exe), "--check-config", str(cfg)], capture_output=True, text=True, cwd="/", timeout=60,
                       env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stdout + r.stderr
