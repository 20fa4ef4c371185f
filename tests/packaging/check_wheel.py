#!/usr/bin/env python3
"""Build the wheel, install it in a fresh venv (not editable) and start it, as a user would.

    python tests/packaging/check_wheel.py [--keep]

1. builds the wheel from the checkout's files (tracked and new, not ignored ones), in a
   scratch copy so no stale ``build/`` is reused;
2. checks its contents: every Python package, every file of ``schemas/`` and ``conf/``;
3. installs it with its dependencies into a new venv and, from outside the checkout,
   runs ``tornado-proxy --check-config`` on every shipped ``conf/*.json`` (dummy values
   for the ``${VAR}``s they need);
4. starts ``tornado-proxy`` on a free port, sends one chat request to the echo model,
   stops it with SIGTERM and expects exit status 0.

Needs only the standard library, pip and venv.  Exit status 0 when all is well, 1 with
the problems on stderr otherwise.  Every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_DIRS = ("schemas", "conf")
PACKAGES = ("tornado_proxy", "providers")
# ${VAR} without a default: a config needs it set (${VAR:-default} does not)
NEEDED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the built-in default config turns these providers on when set: keep them out
PROVIDER_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY")


class Failed(Exception):
    pass


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
    if p.returncode != 0:
        raise Failed(f"exit {p.returncode}: {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stdout


def source_files(root: Path) -> list[str]:
    """The checkout's files as a build would see them: tracked and untracked, not ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not {".venv", "build", "dist", ".git"} & set(p.relative_to(root).parts)]
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def build_wheel(work: Path, python: str = sys.executable) -> Path:
    src = work / "src"
    for name in source_files(ROOT):
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)
    dist = work / "dist"
    run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        timeout=120)
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise Failed(f"expected one wheel in {dist}, found {[w.name for w in wheels]}")
    return wheels[0]


def wheel_problems(wheel: Path, root: Path = ROOT) -> list[str]:
    """What the wheel lacks: a package (a folder of .py files without its __init__.py,
    which a regular install leaves out), or a file of schemas/ or conf/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    problems = []
    for top in PACKAGES:
        for init_dir in sorted({p.parent for p in (root / top).rglob("*.py")}):
            rel = init_dir.relative_to(root).as_posix()
            if rel + "/__init__.py" not in names:
                problems.append(f"package {rel.replace('/', '.')} is not in the wheel (no __init__.py?)")
    for data in DATA_DIRS:
        for f in sorted((root / data).rglob("*.json")):
            rel = f.relative_to(root).as_posix()
            if f"tornado_proxy/_data/{rel}" not in names:
                problems.append(f"{rel} is not in the wheel (expected as tornado_proxy/_data/{rel})")
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_and_run(wheel: Path, work: Path, python: str = sys.executable) -> None:
    venv = work / "venv"
    run([python, "-m", "venv", str(venv)], timeout=120)
    vpy, bindir = venv / "bin" / "python", venv / "bin"
    run([str(vpy), "-m", "pip", "install", "-q", str(wheel)], timeout=300)
    outside = work / "elsewhere"  # no checkout on the path: only the installed package can answer
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV and k != "PYTHONPATH"}
    where = run([str(vpy), "-c", "import tornado_proxy.resources as r, tornado_proxy;"
                 "print(r.data_dir('conf')); print(tornado_proxy.__file__)"], timeout=60, env=env, cwd=outside)
    conf_dir, module = (Path(line) for line in where.split())
    if ROOT in module.parents or ROOT in conf_dir.parents:
        raise Failed(f"the installed gateway reads the checkout ({module}, {conf_dir})")
    confs = sorted(conf_dir.glob("*.json"))
    if not confs:
        raise Failed(f"no conf/*.json shipped in {conf_dir}")
    for conf in confs:
        dummies = {v: "dummy-value" for v in NEEDED_VAR.findall(conf.read_text(encoding="utf-8"))}
        run([str(bindir / "tornado-proxy"), "--check-config", str(conf)], timeout=60, env={**env, **dummies},
            cwd=outside)
    serve_once(bindir / "tornado-proxy", env, outside)


def serve_once(exe: Path, env: dict[str, str], cwd: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Failed("the installed tornado-proxy did not come up") from None
                time.sleep(0.2)
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "echo", "messages": [
                                         {"role": "user", "content": "packaged and running"}]}).encode())
        answer = json.loads(urllib.request.urlopen(req, timeout=10).read())
        text = answer["choices"][0]["message"]["content"]
        if text != "packaged and running":
            raise Failed(f"the echo model answered {text!r}")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            raise Failed("tornado-proxy did not exit within 40s of SIGTERM") from None
        if rc != 0:
            raise Failed(f"tornado-proxy exited {rc} on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
        if sys.exc_info()[0] is not None:
            sys.stderr.write(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (printed) for a look")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tornado-proxy-wheel-"))
    t0 = time.monotonic()
    try:
        wheel = build_wheel(work)
        problems = wheel_problems(wheel)
        if problems:
            raise Failed("the wheel is incomplete:\n  " + "\n  ".join(problems))
        install_and_run(wheel, work)
    except Failed as exc:
        print(f"check_wheel: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"check_wheel: scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"check_wheel: ok: {wheel.name} built, installed in a fresh venv, configs checked, "
          f"served one request and stopped cleanly ({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
