"""Configured header templates (providers/headers.py) are checked at start: an unknown
placeholder, a near miss, a header name that is not a token or a value holding a
line break is a configuration error that names the provider (or model, or account)
and the header; the good ones load.  What the templates send is tested end to end in
tests/e2e/test_factory_preset.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tornado_proxy.config import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = "expected one of {uuid}, {request_id}, {session_id}"


def config(provider_headers: dict[str, str] | None = None, account_headers: dict[str, str] | None = None,
           model_headers: dict[str, str] | None = None) -> dict[str, Any]:
    account: dict[str, Any] = {"id": "k1", "api_key": "test-key"}
    if account_headers is not None:
        account["headers"] = account_headers
    model: dict[str, Any] = {"id": "m", "provider": "vend"}
    if model_headers is not None:
        model["headers"] = model_headers
    return {"providers": [{"name": "vend", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "headers": provider_headers or {}, "accounts": [account]}],
            "models": [model]}


# (name, config, the problem it must report)
BAD = [
    ("unknown placeholder in a provider header", config({"X-Trace": "t-{uid}"}),
     f"$.providers[0].headers.X-Trace: provider 'vend': unknown placeholder {{uid}}; {EXPECTED}"),
    ("a dash for an underscore", config({"X-Req": "{request-id}"}),
     f"$.providers[0].headers.X-Req: provider 'vend': unknown placeholder {{request-id}}; {EXPECTED}"),
    ("spaces inside the braces", config({"X-Id": "{ uuid }"}),
     f"$.providers[0].headers.X-Id: provider 'vend': unknown placeholder {{ uuid }}; {EXPECTED}"),
    ("in an account's headers", config(account_headers={"X-A": "{sesion_id}"}),
     f"$.providers[0].accounts[0].headers.X-A: provider 'vend', account 'k1': unknown placeholder "
     f"{{sesion_id}}; {EXPECTED}"),
    ("in a model's headers", config(model_headers={"X-M": "{UUID}"}),
     f"$.models[0].headers.X-M: model 'm': unknown placeholder {{UUID}}; {EXPECTED}"),
    ("a line break in a value", config({"X-Tag": "a\r\nX-Injected: 1"}),
     "$.providers[0].headers.X-Tag: provider 'vend': the value holds a control character (CR, LF...), "
     "which would end the header"),
    ("a header name that is not a token", config({"X-Bad: 1\r\nX": "v"}),
     "$.providers[0].headers: provider 'vend': 'X-Bad: 1\\r\\nX' is not a valid header name"),
]


@pytest.mark.parametrize("name,raw,problem", BAD, ids=[b[0] for b in BAD])
def test_bad_templates_are_refused_at_start(name: str, raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw, "t", env={})
    assert problem in info.value.problems


GOOD = [
    ("every placeholder", {"X-Id": "{uuid}", "X-Req": "req={request_id}", "X-Sess": "{session_id}"}),
    ("no placeholder, JSON braces and a tab", {"X-Meta": '{"team": "a"}', "X-Tab": "a\tb"}),
]


@pytest.mark.parametrize("name,headers", GOOD, ids=[g[0] for g in GOOD])
def test_good_templates_load(name: str, headers: dict[str, str]) -> None:
    cfg = build(config(headers, account_headers=headers, model_headers=headers), "t", env={})
    assert cfg.providers[0]["headers"] == headers


@pytest.mark.parametrize("flag,status", [("--check-config", 1), ("--config", 2)])
def test_check_config_and_start_name_the_provider_and_the_header(tmp_path: Path, flag: str, status: int) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config({"X-Trace": "t-{uid}"})))
    run = subprocess.run([sys.executable, "-m", "tornado_proxy", flag, str(path), "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == status
    assert f"$.providers[0].headers.X-Trace: provider 'vend': unknown placeholder {{uid}}" in run.stderr
