"""The pool of keep-alive connections to the replicas (warmgw.h1.client.Response each)."""

from __future__ import annotations

import asyncio
import errno

from warmgw.h1.client import Response
from warmgw.h1.failures import NotConnected, OutOfFds


class Pool:
    """Keep-alive connections per replica address, closed after `keepalive` s idle (below
    the replica's own idle timeout, so it never closes one as it is being reused)."""

    def __init__(self, connect_timeout: float, read_timeout: float, keepalive: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.idle: dict[tuple[str, int], list[Response]] = {}
        self.closed = False

    async def request(self, host: str, port: int, data: bytes, head_only: bool = False,
                      fresh: bool = False) -> Response:
        """Send a request; return once the response head is in. fresh: on a new
        connection, not a pooled one."""
        key = (host, port)
        conn = None
        idle = None if fresh else self.idle.get(key)
        while idle:
            c = idle.pop()
            c.reused()
            if not c.lost:
                conn = c
                break
        if conn is None:
            conn = await self._connect(key)
        else:
            conn.reset_for_reuse()
        try:
            conn.send(data, head_only, self.read_timeout)
            while not conn._headed:  # the head, awaited here: a coroutine less a request
                await conn._wait()
                conn._check()
        except BaseException:
            conn.lost = True
            if conn.transport is not None:
                conn.transport.abort()
            raise
        return conn

    async def _connect(self, key: tuple[str, int]) -> Response:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Response(self, key), key[0], key[1]
                )
        except TimeoutError:
            raise NotConnected("connect timed out", down=False) from None
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # ours, not the replica's
                raise OutOfFds(f"the gateway is out of file descriptors: {e.strerror}"
                               ) from None
            raise NotConnected(f"cannot connect to {key[0]}:{key[1]}: "
                               f"{e.strerror or e}", down=True) from None
        return conn

    def keep(self, conn: Response) -> None:
        if self.closed or conn.transport is None:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.idle(self.loop.time() + self.keepalive)
        self.idle.setdefault(conn.key, []).append(conn)

    def expire(self, conn: Response) -> None:
        """conn was idle for keepalive s: closed."""
        self.forget(conn)
        if conn.transport is not None:
            conn.lost = True
            conn.transport.close()

    def forget(self, conn: Response) -> None:
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self.idle[conn.key]

    def close_address(self, host: str, port: int) -> None:
        """Close the idle connections to one address (a replica that is gone)."""
        for conn in self.idle.pop((host, port), []):
            conn.drop_timer()
            if conn.transport is not None:
                conn.lost = True
                conn.transport.close()

    async def close(self) -> None:
        self.closed = True
        for key in list(self.idle):
            self.close_address(*key)
