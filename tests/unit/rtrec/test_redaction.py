"""redact_id is keyed by a secret salt: generated once per work dir (0600 file in a 0700
folder), shared by every process of that work dir, and needed to link a token to an id."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rtrec import logging as rtrec_logging
from rtrec.config import load_settings
from rtrec.errors import ConfigError
from rtrec.logging import SALT_FILE, load_redact_salt, redact_id, redact_salt, use_redact_salt

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


@pytest.fixture(autouse=True)
def _own_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts like a fresh process: no salt loaded yet."""
    monkeypatch.setattr(rtrec_logging, "_salt", {})


def test_the_salt_is_generated_once_with_private_permissions(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    salt = redact_salt(settings)
    path = tmp_path / SALT_FILE
    assert len(salt) >= 32 and path.read_text().strip() == salt
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert redact_salt(load_settings(work_dir=tmp_path)) == salt  # read back, not replaced
    assert [p.name for p in path.parent.iterdir()] == ["redact_salt"]  # no temporary left
    assert redact_salt(load_settings(work_dir=tmp_path / "other")) != salt  # per work dir


def test_processes_racing_to_create_the_salt_end_up_with_one(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(redact_salt(settings))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1


def test_tokens_depend_on_the_salt_and_not_only_on_the_id(tmp_path: Path) -> None:
    use_redact_salt("salt-one-0123456789")
    token = redact_id("u42")
    assert token.startswith("h:") and "u42" not in token and token == redact_id("u42")
    assert redact_id("u43") != token
    assert redact_id("u42", salt="salt-two-0123456789") != token
    use_redact_salt("salt-two-0123456789")
    assert redact_id("u42") != token
    # The public algorithm alone does not give the token: hashing guessed ids, with the
    # old fixed salt or none, never meets it.
    guesses = {
        "h:" + hashlib.blake2b(f"{s}:u42".encode(), digest_size=6).hexdigest()
        for s in ("rtrec", "")
    } | {"h:" + hashlib.blake2b(b"u42", digest_size=6).hexdigest()}
    assert token not in guesses and redact_id("u42") not in guesses


def test_every_process_of_a_work_dir_gets_the_same_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that never loaded the salt (the lazy path) and another interpreter on
    the same work dir agree; the settings' own salt overrides the file."""
    monkeypatch.setenv("RTREC_WORK_DIR", str(tmp_path))
    here = redact_id("user-7")  # loads (creates) the work dir's salt on first use
    code = "from rtrec.logging import redact_id; print(redact_id('user-7'))"
    env = {**os.environ, "RTREC_WORK_DIR": str(tmp_path)}
    there = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert there == here
    load_redact_salt(load_settings(work_dir=tmp_path, redact_salt="from-settings-0123456"))
    assert redact_id("user-7") != here
    assert redact_id("user-7") == redact_id("user-7", salt="from-settings-0123456")


def test_an_unusable_salt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / SALT_FILE
    path.parent.mkdir(mode=0o700)
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="redact_salt"):
        redact_salt(load_settings(work_dir=tmp_path))
