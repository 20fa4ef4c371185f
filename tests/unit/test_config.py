"""Config loading: env secrets, when_env, every problem with its JSON path, routing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tornado_proxy.config import ConfigError, Router, build, conf_dir, load

ROOT = Path(__file__).resolve().parents[2]


def test_default_is_echo_only_without_env() -> None:
    cfg = load(None, env={})
    assert [p["name"] for p in cfg.providers] == ["echo"]
    assert cfg.server["port"] == 8000


def test_default_serves_openai_from_env() -> None:
    cfg = load(None, env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    p = [p for p in cfg.providers if p["name"] == "openai"][0]
    assert p["base_url"] == "http://127.0.0.1:9/v1" and p["accounts"][0]["api_key"] == "sk-test"


def test_every_problem_is_reported_with_its_path() -> None:
    raw = {"server": {"port": "80", "bogus": 1},
           "providers": [{"name": "a", "type": "openai", "accounts": [{"api_key": "${NOPE}"}]}],
           "models": [{"id": "m", "provider": "zzz"}]}
    with pytest.raises(ConfigError) as e:
        build(raw, "t", env={})
    text = "\n".join(e.value.problems)
    assert "$.providers[0].accounts[0].api_key: environment variable NOPE is not set" in text
    assert "$.server.port" in text and "$.server: unknown key(s)" in text


def test_semantic_problems() -> None:
    raw = {"providers": [{"name": "a", "type": "nonsense"}, {"name": "a", "type": "openai"}],
           "models": [{"id": "m", "provider": "b"}, {"id": "m", "provider": "a"}]}
    with pytest.raises(ConfigError) as e:
        build(raw, "t", env={})
    text = "\n".join(e.value.problems)
    assert "$.providers[0].type: unknown provider type 'nonsense'" in text
    assert "$.providers[1].name: duplicate provider name 'a'" in text
    assert "$.models[0].provider: no provider named 'b'" in text
    assert "$.models[1].id: model name 'm' is already used" in text


def test_secret_values_are_not_quoted_in_problems() -> None:
    raw = {"providers": [{"name": "a", "type": "openai", "accounts": [{"api_key": 12345678}]}]}
    with pytest.raises(ConfigError) as e:
        build(raw, "t", env={})
    assert "12345678" not in "\n".join(e.value.problems)


def test_router() -> None:
    models = [{"id": "fast", "provider": "p", "upstream_model": "gpt-4o-mini", "aliases": ["f"]},
              {"id": "claude-*", "provider": "p"},
              {"id": "bedrock-*", "provider": "p", "strip_prefix": "bedrock-"}]
    r = Router(models, {"p": "P"})
    assert r.resolve("f")[0]["upstream_model"] == "gpt-4o-mini"
    assert r.resolve("claude-sonnet-4-5")[0]["upstream_model"] == "claude-sonnet-4-5"
    assert r.resolve("bedrock-amazon.nova-pro-v1:0")[0]["upstream_model"] == "amazon.nova-pro-v1:0"
    m, _ = r.resolve("fast-thinking")
    assert m["upstream_model"] == "gpt-4o-mini" and m["_thinking_alias"]
    assert r.resolve("unknown") is None
    assert [x["id"] for x in r.listed()] == ["fast", "f"]


def test_an_alias_without_upstream_model_sends_the_models_id_upstream() -> None:
    r = Router([{"id": "claude-sonnet-4-5-20250929", "provider": "p", "aliases": ["sonnet"]}], {"p": "P"})
    assert r.resolve("sonnet")[0]["upstream_model"] == "claude-sonnet-4-5-20250929"
    assert r.resolve("sonnet-thinking")[0]["upstream_model"] == "claude-sonnet-4-5-20250929"
    assert r.resolve("claude-sonnet-4-5-20250929")[0]["upstream_model"] == "claude-sonnet-4-5-20250929"


@pytest.mark.parametrize("name", sorted(p.name for p in conf_dir().glob("*.json")))
def test_shipped_configs_are_valid(name: str) -> None:
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GEMINI_API_KEY": "x", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x"}
    import os
    env = {**env, **{k: "x" for k in __import__("re").findall(r"\$\{([A-Z0-9_]+)\}", (conf_dir() / name).read_text())}}
    load(str(conf_dir() / name), env=env)


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"providers": [{"name": "echo", "type": "echo"}],
                                "models": [{"id": "echo", "provider": "echo"}]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"providers": [{"name": "x", "type": "openai", "timeouts": {"idle": -1}}]}))
    run = lambda f: subprocess.run([sys.executable, "-m", "tornado_proxy", "--check-config", str(f)],
                                   capture_output=True, text=True, cwd=ROOT)
    ok = run(good)
    assert ok.returncode == 0 and "ok" in ok.stdout
    ko = run(bad)
    assert ko.returncode == 1 and "$.providers[0].timeouts.idle" in ko.stderr
