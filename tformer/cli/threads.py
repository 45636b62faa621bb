"""How many threads torch should use on a machine that other work may keep busy."""

from __future__ import annotations

import os
import time

import torch


def _busy_cores(window: float = 0.25) -> float | None:
    """How many cores other processes keep busy right now: the non-idle share of the CPU time in
    ``/proc/stat`` over ``window`` seconds, times the number of cores; the 1-minute load average
    where there is no ``/proc/stat``; None where neither exists (Windows).

    The load average alone misleads: it counts tasks waiting on I/O and trails the present by a
    minute, so a quiet 2-core VM here showed 1.0 and got one thread, 20% slower than two.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (elapsed - (idle1 - idle0)) / elapsed


def _idle_threads(busy: float | None = None) -> int:
    """torch's default thread count, lowered to the number of cores other processes leave idle.

    OpenMP threads that share a busy core wait for one another at every synchronisation point: on
    2 cores with another busy process, a small Transformer's training step took 343 ms with 2
    threads and 113 ms with 1 (measured here), so a busy machine is better served by fewer threads.
    """
    default = torch.get_num_threads()
    busy = _busy_cores() if busy is None else busy
    if busy is None:
        return default
    idle = round((os.cpu_count() or default) - busy)
    return max(1, min(default, idle))
