"""The typed config: config.json, SWITCHBOARD_* overrides, validation that names the key, and save()."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.core.config import DEFAULT_PORT, Config, ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SWITCHBOARD_* setting from the shell running the tests."""
    for name in Config.model_fields:
        monkeypatch.delenv(f"SWITCHBOARD_{name.upper()}", raising=False)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "config.json"


def write(path: Path, values: object) -> None:
    path.write_text(json.dumps(values), encoding="utf-8")


def test_no_file_gives_the_defaults(path: Path) -> None:
    assert Config.load(path) == Config()
    assert Config().port == DEFAULT_PORT


def test_unknown_keys_are_named(path: Path) -> None:
    write(path, {"port": 9000, "colour": "red", "bogus": 1})
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    assert str(caught.value) == f"{path}: unknown setting(s) bogus, colour"
    with pytest.raises(ConfigError, match=r"^unknown setting\(s\) colour$"):
        Config(colour="red")


@pytest.mark.parametrize(
    ("values", "key", "reason"),
    [
        ({"port": 70000}, "port", "less than or equal to 65535"),
        ({"port": "http"}, "port", "valid integer"),
        ({"n_ctx": 0}, "n_ctx", "greater than or equal to 1"),
        ({"memory_budget_fraction": 1.5}, "memory_budget_fraction", "less than or equal to 1"),
        ({"discovery": "sometimes"}, "discovery", "valid boolean"),
        ({"model_dirs": "/models"}, "model_dirs", "valid list"),
        ({"model_dirs": ["/models", 3]}, "model_dirs[1]", "valid string"),
        ({"host": ""}, "host", "at least 1 character"),
    ],
)
def test_a_bad_value_names_its_key_and_why(path: Path, values: dict[str, object], key: str, reason: str) -> None:
    write(path, values)
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message


def test_unreadable_files_are_config_errors(path: Path) -> None:
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(path)
    write(path, [1, 2])
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        Config.load(path)


def test_assignment_is_validated(path: Path) -> None:
    config = Config(discovery=False, model_dirs=["/a"])
    config.port = 0  # any free port
    config.model_dirs.append("/b")
    config.host, config.api_key = "0.0.0.0", "s3cret"
    assert (config.port, config.model_dirs, config.host, config.api_key) == (0, ["/a", "/b"], "0.0.0.0", "s3cret")
    with pytest.raises(ConfigError, match=r"^port: .*greater than or equal to 0"):
        config.port = -1
    with pytest.raises(ConfigError, match=r"^idle_ttl_s: "):
        Config(idle_ttl_s=0)
    assert config.port == 0, "a rejected value leaves the setting as it was"


def test_environment_overrides_the_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(path, {"port": 9100, "discovery": True, "model_dirs": ["/file"], "n_gpu_layers": 0})
    monkeypatch.setenv("SWITCHBOARD_PORT", "9000")
    monkeypatch.setenv("SWITCHBOARD_DISCOVERY", "false")
    monkeypatch.setenv("SWITCHBOARD_MODEL_DIRS", os.pathsep.join(["/a", "/b c"]))
    monkeypatch.setenv("SWITCHBOARD_CORS_ORIGINS", "http://localhost:3000, https://example.org")
    monkeypatch.setenv("SWITCHBOARD_MEMORY_BUDGET_FRACTION", "0.25")
    monkeypatch.setenv("SWITCHBOARD_N_GPU_LAYERS", "")  # empty counts as unset
    config = Config.load(path)
    assert config.port == 9000
    assert config.discovery is False
    assert config.model_dirs == ["/a", "/b c"]
    assert config.cors_origins == ["http://localhost:3000", "https://example.org"]
    assert config.memory_budget_fraction == 0.25
    assert config.n_gpu_layers == 0
    monkeypatch.setenv("SWITCHBOARD_MODEL_DIRS", '["/x:y", "/z"]')
    assert Config.load(path).model_dirs == ["/x:y", "/z"]


def test_a_bad_environment_value_names_its_variable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_PORT", "ninety")
    with pytest.raises(ConfigError, match=r"^SWITCHBOARD_PORT: port: .*valid integer"):
        Config.load(path)
    monkeypatch.delenv("SWITCHBOARD_PORT")
    monkeypatch.setenv("SWITCHBOARD_ALLOWED_HOSTS", "[not json")
    with pytest.raises(ConfigError, match=r"^SWITCHBOARD_ALLOWED_HOSTS: not a JSON list"):
        Config.load(path)


def test_the_api_key_variable_is_used_only_when_the_file_sets_none(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_API_KEY", "from-env")
    assert Config.load(path).api_key == "from-env"
    write(path, {"api_key": "from-file"})
    assert Config.load(path).api_key == "from-file"


def test_save_never_writes_the_api_key_variable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_API_KEY", "from-env")
    config = Config.load(path)
    config.port = 9001
    config.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["api_key"] is None and saved["port"] == 9001
    write(path, {"api_key": "from-file"})
    Config.load(path).save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["api_key"] == "from-file"


def test_save_keeps_the_file_value_of_an_overridden_setting(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(path, {"port": 9100, "host": "127.0.0.2"})
    monkeypatch.setenv("SWITCHBOARD_PORT", "9000")
    monkeypatch.setenv("SWITCHBOARD_HOST", "::1")
    config = Config.load(path)
    config.host = "localhost"  # changed by the user after loading: saved
    config.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert (saved["port"], saved["host"]) == (9100, "localhost")


def test_round_trip(path: Path) -> None:
    config = Config(host="0.0.0.0", port=0, api_key="k", model_dirs=["/m"], discovery=False,
                    memory_budget_bytes=2**30, n_threads=2, n_gpu_layers=-1, prompt_cache_bytes=0,
                    cors_origins=["http://localhost:3000"], allowed_hosts=["box.lan"], idle_ttl_s=0.5)
    config.save(path)
    assert Config.load(path) == config
    assert list(path.parent.iterdir()) == [path], "written through a temporary file that is renamed"


def test_every_setting_is_described() -> None:
    assert all(field.description for field in Config.model_fields.values())
