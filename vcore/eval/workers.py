"""A small process pool with a hard wall-clock limit per item.

Why not ``ProcessPoolExecutor``: it cannot stop one stuck task, and ``multiprocessing.Pool`` times a ``get``
from the call, not from when the task started. Grading needs both: math-verify bounds its own work with
``signal.alarm`` (which only works in a main thread, so every worker runs tasks in its main thread), and a task
that still hangs (a C-level loop in sympy, a stuck judge) must cost one item, not the run. Here every worker
takes one task at a time; a task past its deadline gets its worker killed and replaced, and is reported as a
timeout. Workers are started with ``spawn`` so that a parent holding CUDA or threads is never forked.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from tqdm.auto import tqdm


@dataclass
class TaskResult:
    status: str  # ok | timeout | error
    value: Any = None
    error: str | None = None


def _worker_loop(conn: Connection) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        index, fn, payload = msg
        try:
            out = (index, "ok", fn(payload), None)
        except Exception as err:  # reported per item; the worker stays alive for the next task
            out = (index, "error", None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        conn.send(out)


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=2)
        self.kill()


def map_with_timeout(
    fn: Callable[[Any], Any],
    payloads: Sequence[Any],
    *,
    workers: int,
    timeout_s: float | Sequence[float],
    desc: str | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """``[fn(p) for p in payloads]`` in ``workers`` processes, each item cut off after its ``timeout_s``.

    ``fn`` must be importable (a module-level function). ``workers=0`` runs in this process without timeouts
    (for debugging only). Results keep the order of ``payloads``.
    """
    n = len(payloads)
    timeouts = [float(timeout_s)] * n if isinstance(timeout_s, (int, float)) else [float(t) for t in timeout_s]
    if len(timeouts) != n:
        raise ValueError(f"{len(timeouts)} timeouts for {n} payloads")
    results: list[TaskResult | None] = [None] * n
    bar = tqdm(total=n, desc=desc, disable=not progress or n == 0, leave=False)
    if workers == 0:
        for i, p in enumerate(payloads):
            try:
                results[i] = TaskResult("ok", fn(p))
            except Exception as err:
                results[i] = TaskResult("error", error=f"{type(err).__name__}: {err}")
            bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    ctx = mp.get_context("spawn")
    pool = [_Worker(ctx) for _ in range(min(workers, n))]
    next_task = 0
    try:
        while any(r is None for r in results):
            for w in pool:
                if w.task is None and next_task < n:
                    w.conn.send((next_task, fn, payloads[next_task]))
                    w.task, w.deadline = next_task, time.monotonic() + timeouts[next_task]
                    next_task += 1
            busy = [w for w in pool if w.task is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=wait_s)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        index, status, value, error = w.conn.recv()
                        results[index] = TaskResult(status, value, error)
                    except (EOFError, OSError):  # the worker died (e.g. killed by the OOM killer)
                        results[w.task] = TaskResult("error", error="grading worker died")
                        w.kill()
                        pool[i] = _Worker(ctx)
                        bar.update(1)
                        continue
                    w.task = None
                    bar.update(1)
                elif time.monotonic() >= w.deadline:
                    results[w.task] = TaskResult("timeout", error=f"no result within {timeouts[w.task]:.0f} s")
                    w.kill()
                    pool[i] = _Worker(ctx)
                    bar.update(1)
    finally:
        for w in pool:
            w.stop()
        bar.close()
    return results  # type: ignore[return-value]
