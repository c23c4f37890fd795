"""A small authoritative DNS server on loopback for tests (dnslib, UDP, its own thread):
answers A, AAAA and SRV records that the test changes while it runs, and can be told to
fail (SERVFAIL) to stand for an outage."""

from __future__ import annotations

import threading
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


class LoopbackDns(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[Any]] = {}
        self.failing = False
        self.queries = 0
        self._server = DNSServer(self, address="127.0.0.1", port=0,
                                 logger=DNSLogger(logf=lambda _s: None))

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self._server.server.server_address[1]}"

    def __enter__(self) -> LoopbackDns:
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._server.server.server_close()

    def set_a(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[(_fqdn(name), "A")] = [A(a) for a in addresses]

    def set_aaaa(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[(_fqdn(name), "AAAA")] = [AAAA(a) for a in addresses]

    def set_srv(self, name: str, targets: list[tuple[str, int]]) -> None:
        with self._lock:
            self._records[(_fqdn(name), "SRV")] = [SRV(0, 10, port, _fqdn(target))
                                                   for target, port in targets]

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        q = request.q
        with self._lock:
            self.queries += 1
            if self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            qtype = QTYPE[q.qtype]
            name = str(q.qname)
            rdatas = self._records.get((name, qtype))
            if rdatas is None and not any(n == name for n, _ in self._records):
                reply.header.rcode = RCODE.NXDOMAIN
            for rdata in rdatas or []:
                reply.add_answer(RR(q.qname, q.qtype, rdata=rdata, ttl=1))
        return reply
