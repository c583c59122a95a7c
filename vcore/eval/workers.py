"""A small process pool with a hard wall-clock limit per item.

Why not ``ProcessPoolExecutor``: it cannot stop one stuck task, and ``multiprocessing.Pool`` times a ``get``
from the call, not from when the task started. Grading needs both: math-verify bounds its own work with
``signal.alarm`` (which only works in a main thread, so every worker runs tasks in its main thread), and a task
that still hangs (a C-level loop in sympy, a stuck judge) must cost one item, not the run. Here every worker
takes one task at a time; a task past its deadline gets its worker killed and replaced, and is reported as a
timeout. A deadline starts when a started worker receives its task: a worker first says it is ready, so the seconds
a new worker spends starting Python and importing (many, on a busy node) never count against an item.

Workers are plain ``python -m vcore.eval.worker_main`` subprocesses talking pickle frames over pipes, not
``multiprocessing`` children: nothing is forked from a parent that may hold CUDA or threads, and unlike
``spawn`` the caller's ``__main__`` is never re-imported (a script without an ``if __name__ == "__main__"``
guard still works). They inherit the parent's ``sys.path``, so ``fn`` only has to be importable there.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, BinaryIO

from tqdm.auto import tqdm

_HEADER = struct.Struct("<Q")
READY = "ready"  # a worker's first message
STARTUP_S = 300.0  # a worker that has not started after this long stops the map


@dataclass
class TaskResult:
    status: str  # ok | timeout | error
    value: Any = None
    error: str | None = None


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream: BinaryIO) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("worker pipe closed")
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("worker pipe closed mid-message")
    return pickle.loads(data)


def serve() -> None:
    """Worker main loop: tasks arrive on stdin, results leave on a private copy of stdout."""
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the task prints goes to stderr, never into the result stream
    sys.stdout = sys.stderr
    _send(out, READY)  # started: deadlines count from here, not from the spawn (imports take seconds on a busy node)
    while True:
        try:
            msg = _recv(inp)
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        index, fn, payload = msg
        try:
            reply = (index, "ok", fn(payload), None)
        except Exception as err:  # reported per item; the worker stays alive for the next task
            reply = (index, "error", None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        _send(out, reply)


class _Worker:
    def __init__(self, after_exit: Callable[[int], None] | None = None) -> None:
        self.after_exit = after_exit
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vcore.eval.worker_main"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.task: int | None = None
        self.deadline = 0.0
        self.ready = False

    def send(self, msg: Any) -> None:
        _send(self.proc.stdin, msg)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self.after_exit is not None:
            self.after_exit(self.proc.pid)

    def stop(self) -> None:
        try:
            self.send(None)
            self.proc.wait(timeout=2)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def map_with_timeout(
    fn: Callable[[Any], Any],
    payloads: Sequence[Any],
    *,
    workers: int,
    timeout_s: float | Sequence[float],
    desc: str | None = None,
    progress: bool = True,
    after_worker_exit: Callable[[int], None] | None = None,
    on_result: Callable[[int, TaskResult], None] | None = None,
) -> list[TaskResult]:
    """``[fn(p) for p in payloads]`` in ``workers`` processes, each item cut off after its ``timeout_s``.

    ``fn`` must be importable (a module-level function). ``workers=0`` runs in this process without timeouts
    (for debugging only). Results keep the order of ``payloads``; ``on_result(index, result)`` also gets each one as
    soon as it is known (the evaluation journal records it then). ``after_worker_exit(pid)`` runs here after each
    worker has exited, killed at a deadline or stopped at the end: it removes what a killed worker could not (the
    code sandbox's processes and folders, :func:`vcore.eval.sandbox_cleanup.reclaim`).
    """
    if workers == 0:
        results = []
        for i, p in enumerate(tqdm(payloads, desc=desc, disable=not progress or not payloads, leave=False)):
            try:
                results.append(TaskResult("ok", fn(p)))
            except Exception as err:  # reported per item, as a worker would
                results.append(TaskResult("error", error=f"{type(err).__name__}: {err}"))
            if on_result is not None:
                on_result(i, results[-1])
        return results
    with WorkerPool(min(workers, max(len(payloads), 1)), after_worker_exit) as pool:
        return pool.map(fn, payloads, timeout_s=timeout_s, desc=desc, progress=progress, on_result=on_result)


class WorkerPool:
    """Worker processes kept for many :meth:`map` calls, each item with its own deadline.

    :func:`map_with_timeout` starts a pool per call; a caller that grades every few seconds (the RL reward, once per
    generation batch) keeps one, so that each call does not pay for starting Python and importing sympy again.
    Workers start on the first :meth:`map`; :meth:`close` (or leaving the ``with`` block) stops them.
    """

    def __init__(self, workers: int, after_worker_exit: Callable[[int], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(
                f"a worker pool needs at least one worker (got {workers}); map_with_timeout(workers=0) runs in-process"
            )
        self.size, self.after_worker_exit = workers, after_worker_exit
        self.workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def abandon(self) -> None:
        """Kill every worker now: the caller was interrupted (SIGTERM, an error), and a worker mid-task would only
        answer when its task ends."""
        for w in self.workers:
            w.kill()
        self.workers = []

    def map(
        self,
        fn: Callable[[Any], Any],
        payloads: Sequence[Any],
        *,
        timeout_s: float | Sequence[float],
        desc: str | None = None,
        progress: bool = True,
        on_result: Callable[[int, TaskResult], None] | None = None,
    ) -> list[TaskResult]:
        """``[fn(p) for p in payloads]`` on the pool's workers (see :func:`map_with_timeout`)."""
        n = len(payloads)
        timeouts = [float(timeout_s)] * n if isinstance(timeout_s, (int, float)) else [float(t) for t in timeout_s]
        if len(timeouts) != n:
            raise ValueError(f"{len(timeouts)} timeouts for {n} payloads")
        results: list[TaskResult | None] = [None] * n
        if n == 0:
            return []
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.after_worker_exit))
        pool = self.workers
        bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
        next_task = 0

        def replace(i: int) -> None:
            pool[i].kill()
            pool[i] = _Worker(self.after_worker_exit)

        def done(index: int, result: TaskResult) -> None:
            results[index] = result
            bar.update(1)
            if on_result is not None:
                on_result(index, result)

        try:
            while any(r is None for r in results):
                for w in pool:
                    if w.ready and w.task is None and next_task < n:
                        w.task, w.deadline = next_task, time.monotonic() + timeouts[next_task]
                        next_task += 1
                        try:
                            w.send((w.task, fn, payloads[w.task]))
                        except (BrokenPipeError, OSError):
                            pass  # a dead worker shows up as EOF below
                busy = [w for w in pool if w.task is not None]
                starting = [w for w in pool if not w.ready]
                wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic()) if busy else STARTUP_S
                ready = wait([w.proc.stdout for w in busy + starting], timeout=wait_s)
                if not busy and not ready:
                    raise RuntimeError(f"no grading worker started within {STARTUP_S:.0f} s")
                for w in starting:
                    if w.proc.stdout in ready:
                        try:
                            w.ready = _recv(w.proc.stdout) == READY
                        except (EOFError, OSError, pickle.UnpicklingError):
                            w.ready = False
                        if not w.ready:  # the package does not import, say: every replacement would fail alike
                            code = w.proc.wait()
                            raise RuntimeError(
                                f"a grading worker exited while starting (status {code}): see its stderr"
                            )
                for i, w in enumerate(pool):
                    if w.task is None:
                        continue
                    if w.proc.stdout in ready:
                        try:
                            index, status, value, error = _recv(w.proc.stdout)
                        except (
                            EOFError,
                            OSError,
                            pickle.UnpicklingError,
                        ):  # died (OOM killer, segfault in a C library)
                            task = w.task
                            replace(i)
                            done(task, TaskResult("error", error=f"grading worker died (exit {w.proc.poll()})"))
                            continue
                        w.task = None
                        done(index, TaskResult(status, value, error))
                    elif time.monotonic() >= w.deadline:
                        task = w.task
                        replace(i)
                        done(task, TaskResult("timeout", error=f"no result within {timeouts[task]:.0f} s"))
        except BaseException:
            self.abandon()  # a worker may be mid-task: none of them can be reused
            raise
        finally:
            bar.close()
        return results  # type: ignore[return-value]
