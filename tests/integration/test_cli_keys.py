"""`switchboard keys` as a user runs it: on the store itself, and seen at once by a server already running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.servers import start_server


def keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The home start_server uses, so the CLI and the server share one store.
    env = {"SWITCHBOARD_HOME": str(tmp_path / "sbhome"), "HOME": str(tmp_path / "home"),
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "-m", "app", "keys", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_add_list_revoke(tmp_path: Path) -> None:
    assert "No API keys" in keys(tmp_path, "list").stdout
    added = keys(tmp_path, "add", "ci", "--tokens-per-hour", "5000", "--requests-per-hour", "100")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("sb-") and "\n" not in secret, "stdout is the secret alone, for scripts"
    assert "shown this once" in added.stderr and "inference" in added.stderr
    assert keys(tmp_path, "add", "ops", "--scope", "admin").returncode == 0

    table = keys(tmp_path, "list")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "SCOPE", "CREATED", "LAST", "USED", "TOKENS/H", "REQUESTS/H"]
    assert rows[0].split()[:2] == ["ci", "inference"] and rows[0].split()[-3:] == ["never", "5000", "100"]
    assert rows[1].split()[:2] == ["ops", "admin"] and rows[1].split()[-2:] == ["-", "-"]
    listed = json.loads(keys(tmp_path, "list", "--json").stdout)
    assert [(k["name"], k["tokens_per_hour"]) for k in listed] == [("ci", 5000), ("ops", None)]
    assert secret not in table.stdout + json.dumps(listed)

    again = keys(tmp_path, "add", "ci")
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = keys(tmp_path, "add", "no spaces")
    assert bad.returncode == 1 and "name" in bad.stderr
    assert keys(tmp_path, "add", "x", "--scope", "root").returncode == 2  # argparse's choices
    assert keys(tmp_path, "revoke", "ci").stdout.strip() == "Revoked the key 'ci'"
    gone = keys(tmp_path, "revoke", "ci")
    assert gone.returncode == 1 and "No API key is named 'ci'" in gone.stderr
    assert [k["name"] for k in json.loads(keys(tmp_path, "list", "--json").stdout)] == ["ops"]


def test_a_running_server_sees_keys_added_and_revoked_at_once(tmp_path: Path) -> None:
    served = start_server(tmp_path)
    try:
        url = f"{served.base_url}/v1/models"
        assert httpx.get(url).status_code == 200, "no key yet: open"
        secret = keys(tmp_path, "add", "late", "--requests-per-hour", "50").stdout.strip()
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {secret}"}).status_code == 200
        assert keys(tmp_path, "revoke", "late").returncode == 0
        assert httpx.get(url, headers={"authorization": f"Bearer {secret}"}).status_code == 200, \
            "no key left: open again"
        keys(tmp_path, "add", "other")
        assert httpx.get(url, headers={"authorization": f"Bearer {secret}"}).status_code == 401
    finally:
        served.stop()
    listed = json.loads(keys(tmp_path, "list", "--json").stdout)
    assert [k["name"] for k in listed] == ["other"]
