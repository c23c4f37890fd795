"""What can go wrong with a request to a replica (warmgw.h1.client): it was not sent
(NotConnected, OutOfFds), or it was and the replica failed it (Cut)."""

from __future__ import annotations


class NotConnected(Exception):
    """No connection: the request was not sent. down: the replica is not listening."""

    def __init__(self, why: str, down: bool) -> None:
        super().__init__(why)
        self.down = down


class OutOfFds(Exception):
    """The gateway has no file descriptor to connect with: nothing is known of the
    replica, and no other replica would fare better now."""


class Cut(Exception):
    """The replica had the request (or may have) and failed it. timeout: it went quiet.
    unanswered: the connection (fresh or reused) closed or reset before any byte of the
    response came back: the replica closed an idle connection as the request went out, or
    its process died or restarted with the request in it. Never set with timeout."""

    def __init__(self, why: str, timeout: bool = False, unanswered: bool = False) -> None:
        super().__init__(why)
        self.timeout = timeout
        self.unanswered = unanswered
