"""bin/tornado-proxy-accounts and bin/tornado-proxy-check-config: exit codes, output, no secrets."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY_A = "test-key-aaaa-0123456789"
KEY_B = "test-key-bbbb-9876543210"
REFRESH = "rt-test-refresh-0123456789"


def load_script(name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "bin" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


ACCOUNTS = load_script("tornado-proxy-accounts")
CHECK = load_script("tornado-proxy-check-config")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    c = {"providers": [
        {"name": "p", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "accounts": [{"id": "cfg", "api_key": "${TP_TEST_KEY:-test-key-cfg-0123456789}"}]},
        {"name": "o", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "scheduler": {"oauth": {"token_url": "http://127.0.0.1:9/token", "client_id": "c"}}}],
        "models": [{"id": "m", "provider": "p"}], "accounts_file": "accounts.json"}
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(c))
    return path


def run(module: ModuleType, argv: list[str], monkeypatch, capsys, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = module.main(argv)
    except SystemExit as e:  # argparse: --help and usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def file_accounts(conf: Path) -> dict[str, dict]:
    return {a["id"]: a for a in json.loads((conf.parent / "accounts.json").read_text())["accounts"]}


@pytest.mark.parametrize("name,argv,stdin,code,says", [
    ("add a key", ["add", "--provider", "p"], KEY_A + "\n", 0, ["added p-1 (p, key ****6789)"]),
    ("add several with --loop", ["add", "--provider", "p", "--loop"], f"{KEY_A}\n\n{KEY_B}\n", 0,
     ["added p-1", "added p-2 (p, key ****3210)"]),
    ("a provider with oauth takes refresh tokens", ["add", "--provider", "o", "--id", "me"], REFRESH, 0,
     ["added me (o, refresh token ****6789)"]),
    ("nothing pasted", ["add", "--provider", "p"], "", 1, ["nothing added"]),
    ("unknown provider", ["add", "--provider", "zz"], KEY_A, 1, ["no provider named 'zz'"]),
    ("--id with --loop", ["add", "--provider", "p", "--id", "x", "--loop"], f"{KEY_A}\n{KEY_B}\n", 2, ["--id"]),
    ("disable a config account", ["disable", "cfg", "--reason", "billing"], "", 0, ["cfg: disabled"]),
    ("disable an unknown account", ["disable", "nope"], "", 1, ["no account 'nope'"]),
    ("enable", ["enable", "cfg"], "", 0, ["cfg: enabled"]),
    ("usage error", ["frobnicate"], "", 2, ["invalid choice"]),
])
def test_accounts_script(conf, monkeypatch, capsys, name, argv, stdin, code, says):
    got, out, err = run(ACCOUNTS, [argv[0], "-c", str(conf), *argv[1:]] if argv[0] != "frobnicate" else argv,
                        monkeypatch, capsys, stdin)
    assert got == code, (out, err)
    for s in says:
        assert s in out + err
    for secret in (KEY_A, KEY_B, REFRESH):
        assert secret not in out + err


def test_added_accounts_land_in_the_file_and_list_masks_them(conf, monkeypatch, capsys):
    run(ACCOUNTS, ["add", "-c", str(conf), "--provider", "p", "--loop", "--weight", "2"], monkeypatch, capsys,
        f"{KEY_A}\n{KEY_B}\n")
    run(ACCOUNTS, ["add", "-c", str(conf), "--provider", "o"], monkeypatch, capsys, REFRESH)
    run(ACCOUNTS, ["disable", "p-2", "-c", str(conf), "--reason", "card expired"], monkeypatch, capsys)
    acc = file_accounts(conf)
    assert (acc["p-1"]["api_key"], acc["p-1"]["weight"], acc["p-2"]["api_key"]) == (KEY_A, 2.0, KEY_B)
    assert acc["o-1"]["refresh_token"] == REFRESH and acc["o-1"]["access_token"] is None
    code, out, _ = run(ACCOUNTS, ["list", "-c", str(conf)], monkeypatch, capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"cfg", "p-1", "p-2", "o-1"}
    assert "env" in rows["cfg"] and "****6789" in rows["p-1"]
    assert "disabled" in rows["p-2"] and "card expired" in rows["p-2"]
    assert "oauth" in rows["o-1"]
    code, out, _ = run(ACCOUNTS, ["list", "-c", str(conf), "--json", "--provider", "p"], monkeypatch, capsys)
    assert sorted(r["id"] for r in json.loads(out)) == ["cfg", "p-1", "p-2"]
    assert KEY_A not in out and KEY_B not in out and REFRESH not in out


@pytest.mark.parametrize("name,argv,env,code,says", [
    ("no admin token in the environment", ["list", "--url", "http://127.0.0.1:1"], {}, 2, ["TORNADO_PROXY_ADMIN_TOKEN"]),
    ("server unreachable", ["list", "--url", "http://127.0.0.1:1"], {"TORNADO_PROXY_ADMIN_TOKEN": "t"}, 3,
     ["unreachable"]),
    ("no file and no url", ["list"], {}, 2, ["--config"]),
])
def test_accounts_script_failures(monkeypatch, capsys, name, argv, env, code, says):
    monkeypatch.delenv("TORNADO_PROXY_ADMIN_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got, out, err = run(ACCOUNTS, argv, monkeypatch, capsys)
    assert got == code and all(s in err for s in says), err


@pytest.mark.parametrize("name,file_entries,code,says", [
    ("valid", [{"id": "k", "provider": "p", "api_key": KEY_A}], 0, ["ok (2 provider(s), 1 model route(s), "
                                                                    "1 config account(s), 1 accounts-file entry)"]),
    ("refresh token where no token endpoint is configured",
     [{"id": "k", "provider": "p", "refresh_token": REFRESH}], 1, ["holds a refresh token but provider 'p'"]),
    ("unknown provider", [{"id": "k", "provider": "zz", "api_key": KEY_A}], 1, ["unknown provider 'zz'"]),
    ("an id used twice", [{"id": "cfg", "provider": "o", "api_key": KEY_A}], 1, ["also used by provider 'p'"]),
])
def test_check_config(conf, monkeypatch, capsys, name, file_entries, code, says):
    (conf.parent / "accounts.json").write_text(json.dumps({"version": 1, "generation": 1,
                                                           "accounts": file_entries}))
    got, out, err = run(CHECK, [str(conf)], monkeypatch, capsys)
    assert got == code, err
    assert all(s in out + err for s in says), out + err
    assert KEY_A not in out + err and REFRESH not in out + err


def test_check_config_reports_schema_problems(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"providers": [{"name": "p", "type": "openai",
                                              "scheduler": {"strategy": "random", "max_tries": 0}}]}))
    got, _, err = run(CHECK, [str(bad)], monkeypatch, capsys)
    assert got == 1 and "strategy" in err and "max_tries" in err


@pytest.mark.parametrize("script,argv", [
    ("tornado-proxy-accounts", ["--help"]),
    ("tornado-proxy-accounts", ["add", "--help"]),
    ("tornado-proxy-accounts", ["list", "--help"]),
    ("tornado-proxy-accounts", ["enable", "--help"]),
    ("tornado-proxy-accounts", ["disable", "--help"]),
    ("tornado-proxy-accounts", ["test", "--help"]),
    ("tornado-proxy-check-config", ["--help"]),
])
def test_help(monkeypatch, capsys, script, argv):
    got, out, _ = run(ACCOUNTS if script.endswith("accounts") else CHECK, argv, monkeypatch, capsys)
    assert got == 0 and "usage:" in out


def test_the_scripts_run_as_executables():
    out = subprocess.run([sys.executable, str(ROOT / "bin" / "tornado-proxy-accounts"), "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Exit codes" in out.stdout
