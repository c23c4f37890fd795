"""The gateway's open-file limit, raised at start from the soft limit to the hard one.

Each replica holds up to three of the gateway's sockets (health checks, warmup, user
requests; more under concurrency), so 1,000 replicas need a few thousand descriptors, far
above the soft limit of 1,024 that systemd and most shells give. Past it every connect
fails with EMFILE, and the replica it was meant for is taken for dead. systemd's advice
is that a program that needs more raises its own soft limit up to the hard one (524,288
by default); Go's runtime does so at start.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("warmgw")

CEILING = 1 << 20  # the kernel's default fs.nr_open: what "unlimited" can be raised to
LOW = 4096  # below this, ~1,000 replicas will not fit


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (or CEILING when unlimited); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("open files limit stays %d (could not raise it to %d: %s)", soft,
                        target, e)
        else:
            log.info("open files limit raised from %d to %d", soft, target)
            soft = target
    if soft != resource.RLIM_INFINITY and soft < LOW:
        log.warning("open files limit is %d: each replica takes up to 3 of them; raise the "
                    "hard limit (ulimit -Hn, LimitNOFILE=) for large fleets", soft)
    return soft
