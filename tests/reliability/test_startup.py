"""A corrupted state file stops the gateway at start with a clear error: exit status 2 and a
message that names the file; no traceback, nothing left listening, no policy guessed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "content",
    [b"\x00\xffgarbage{{{", b'{"version": 1, "active": ', b'["not", "a", "policy"]',
     b'{"version": 7, "active": "blue"}'],
    ids=["binary", "truncated", "wrong-shape", "wrong-version"],
)
def test_corrupted_state_file_at_start_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "policy-state.json"
    state.write_bytes(content)
    port = free_port()
    cfg = {"listen": {"port": port}, "state_file": str(state),
           "replicas": [{"name": "r0", "url": "http://127.0.0.1:9", "pool": "blue"}]}
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "warmgw", "serve", "--config", str(config)],
        capture_output=True, timeout=20, check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert str(state) in err and "state file" in err
    assert "Traceback" not in err and "Unclosed" not in err
    assert state.read_bytes() == content  # left as it was, for a human to look at
    with socket.socket() as s:  # and nothing is listening
        assert s.connect_ex(("127.0.0.1", port)) != 0
