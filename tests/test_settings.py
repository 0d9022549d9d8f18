"""Settings: precedence (overrides > env > config file > defaults), config-file discovery, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personahub.tasks.core.settings import Settings, config_file, load_settings

SECRET = "sk-secret-123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cwd and no configuration from the developer's environment."""
    import os

    for name in list(os.environ):
        if name.startswith("PERSONAHUB_"):
            monkeypatch.delenv(name)
    for name in ("OPENAI_API_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_env_or_file(clean_env: Path) -> None:
    assert config_file() is None
    s = Settings()
    assert s.store == "./personahub-data"
    assert s.llm_base_url is None
    assert s.llm_max_concurrency == 8


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAHUB_STORE", "s3://bucket/prefix")
    monkeypatch.setenv("PERSONAHUB_LLM_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("PERSONAHUB_LLM_STRUCTURED_OUTPUT", "false")
    monkeypatch.setenv("STORE", "/not/prefixed")  # without the prefix: ignored
    s = Settings()
    assert s.store == "s3://bucket/prefix"
    assert s.llm_max_concurrency == 3
    assert s.llm_structured_output is False


def test_env_value_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAHUB_LLM_MAX_CONCURRENCY", "0")  # ge=1
    with pytest.raises(ValueError):
        Settings()


def test_yaml_in_cwd(clean_env: Path) -> None:
    (clean_env / "personahub.yaml").write_text("store: /from/yaml\nllm_model: yaml-model\nllm_max_concurrency: 5\n")
    assert config_file() == Path("personahub.yaml")
    s = Settings()
    assert (s.store, s.llm_model, s.llm_max_concurrency) == ("/from/yaml", "yaml-model", 5)


def test_toml_in_cwd(clean_env: Path) -> None:
    (clean_env / "personahub.toml").write_text('store = "/from/toml"\nllm_timeout_s = 7.5\n')
    s = Settings()
    assert s.store == "/from/toml"
    assert s.llm_timeout_s == 7.5


def test_personahub_config_env_points_to_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "personahub.yaml").write_text("store: /cwd/yaml\n")  # not used: PERSONAHUB_CONFIG wins
    other = clean_env / "conf" / "mine.toml"
    other.parent.mkdir()
    other.write_text('store = "/explicit/toml"\n')
    monkeypatch.setenv("PERSONAHUB_CONFIG", str(other))
    assert Settings().store == "/explicit/toml"

    yml = clean_env / "conf" / "mine.yml"
    yml.write_text("store: /explicit/yaml\n")
    monkeypatch.setenv("PERSONAHUB_CONFIG", str(yml))
    assert Settings().store == "/explicit/yaml"


def test_personahub_config_missing_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAHUB_CONFIG", str(clean_env / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


def test_precedence_override_env_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "personahub.yaml").write_text(
        "store: /file\nllm_model: file-model\nllm_max_retries: 1\n"
    )
    monkeypatch.setenv("PERSONAHUB_STORE", "/env")
    monkeypatch.setenv("PERSONAHUB_LLM_MODEL", "env-model")
    s = load_settings(store="/override", llm_model=None)  # None overrides are ignored
    assert s.store == "/override"  # override > env
    assert s.llm_model == "env-model"  # env > file (the None override did not blank it)
    assert s.llm_max_retries == 1  # file > default
    assert Settings().store == "/env"  # env > file


def test_masked_hides_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", SECRET)
    s = Settings()
    assert s.resolved_api_key() == SECRET
    shown = s.masked()
    assert shown["llm_api_key"] == "**********"
    assert SECRET not in json.dumps(shown)
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    # No key at all: shown as None, not as a mask.
    monkeypatch.delenv("PERSONAHUB_LLM_API_KEY")
    assert Settings().masked()["llm_api_key"] is None


def test_api_key_falls_back_to_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().resolved_api_key() is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    assert Settings().resolved_api_key() == "sk-from-openai-env"
    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", "sk-own")
    assert Settings().resolved_api_key() == "sk-own"  # own setting wins over the fallback


def test_s3_endpoint_falls_back_to_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().resolved_s3_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert Settings().resolved_s3_endpoint() == "http://minio:9000"
    monkeypatch.setenv("PERSONAHUB_S3_ENDPOINT_URL", "http://own:9000")
    assert Settings().resolved_s3_endpoint() == "http://own:9000"


def test_blank_strings_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAHUB_LLM_BASE_URL", "   ")
    monkeypatch.setenv("PERSONAHUB_LLM_MODEL", "")
    s = Settings()
    assert s.llm_base_url is None
    assert s.llm_model is None
    assert Settings(llm_base_url="").llm_base_url is None
    assert Settings(llm_base_url="http://x/v1").llm_base_url == "http://x/v1"


def test_cli_config_masks_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from personahub.cli import app

    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", SECRET)
    monkeypatch.setenv("PERSONAHUB_STORE", "/cli/store")
    runner = CliRunner()
    for args in (["config"], ["config", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
        assert "**********" in result.output
        assert "/cli/store" in result.output
    shown = json.loads(runner.invoke(app, ["config", "--json"]).output)
    assert shown["llm_api_key"] == "**********"


@pytest.mark.parametrize("preset, expected", [(None, "120"), ("45", "45")])
def test_cli_gives_prefects_temporary_server_time_to_start(preset: str | None, expected: str) -> None:
    """Prefect's own 20 s start-up wait fails on a busy 2-core machine; the CLI raises it unless the
    user set it. In a fresh interpreter: this suite's conftest sets the variable itself."""
    import os
    import subprocess
    import sys

    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    env = {k: v for k, v in os.environ.items() if k != name}
    if preset is not None:
        env[name] = preset
    out = subprocess.run([sys.executable, "-c", f"import os, personahub.cli; print(os.environ[{name!r}])"],
                         env=env, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == expected
