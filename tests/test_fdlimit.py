"""The gateway raises its soft open-file limit to the hard one at start (1,000 replicas
need a few thousand sockets; past the limit every connect fails and replicas look dead)."""

from __future__ import annotations

import logging
import resource

import pytest

from warmgw import fdlimit

INF = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "want", "warns"),
    [
        (1024, 524288, 524288, False),  # systemd's default: raised
        (1024, INF, fdlimit.CEILING, False),  # unlimited hard: up to the kernel's nr_open
        (1024, 1024, 1024, True),  # cannot be raised: says so
        (65536, 65536, 65536, False),  # already there: untouched
        (INF, INF, INF, False),
    ],
)
def test_soft_limit_goes_up_to_the_hard_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    soft: int, hard: int, want: int, warns: bool,
) -> None:
    limits = [soft, hard]
    monkeypatch.setattr(resource, "getrlimit", lambda what: tuple(limits))

    def setrlimit(what: int, new: tuple[int, int]) -> None:
        assert what == resource.RLIMIT_NOFILE and new[1] == hard  # never the hard one
        limits[:] = new

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    with caplog.at_level(logging.INFO, "warmgw"):
        assert fdlimit.raise_open_files_limit() == want
    assert limits[0] == want
    assert any(r.levelno == logging.WARNING for r in caplog.records) is warns


def test_a_refused_raise_keeps_the_limit_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 524288))

    def refuse(what: int, new: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    with caplog.at_level(logging.INFO, "warmgw"):
        assert fdlimit.raise_open_files_limit() == 1024
    assert "could not raise it" in caplog.text


def test_the_real_limit_is_raised() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    try:
        got = fdlimit.raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
        assert got == (fdlimit.CEILING if hard == INF else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
