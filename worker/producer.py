"""The producer: keeps one child supplied with claimed tasks, never more than it can run soon.

Slots and batches (``ClaimPolicy``): a child runs one task at a time, so it
claims one task at a time — unless the tasks it just ran were all fast (under
``fast_task_ms``): then the next claim doubles, up to ``batch_size``, and falls
back to one as soon as a task is slow. Slow work is therefore never hoarded
by one child while another sits idle, and a backlog of tiny tasks costs one
claim and one completion statement per batch instead of per task.
Claimed-but-unstarted tasks are covered by the supervisor's heartbeat like
the running one and handed back on shutdown.

Prefetch (two deep): while tasks are fast (the claim has grown past one) and
the last claim came back full, the producer sends the next exchange — write
the previous batch's outcomes, claim the batch after this one — before the
current batch runs, and reads the reply after: the commit's round trip and
fsync overlap with running tasks, in one thread. A child therefore holds at
most its current batch plus one prefetched batch (twice ``batch_size``)
while tasks are fast; one slow task stops prefetching, and a second in a row
hands the prefetched batch back (attempt not counted). A lone slow task is
often just this process being preempted, and handing back costs two
transitions per task.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from worker import metrics
from worker.completer import Completer
from worker.config import WorkerConfig
from worker.exchange import Claim, Exchange


class ClaimPolicy:
    """How many tasks to claim and whether to claim ahead; pure (tested without a database)."""

    def __init__(self, batch_size: int, fast_task_ms: float, max_tasks: int = 0) -> None:
        self.batch_size = batch_size
        self.fast_task_ms = fast_task_ms
        self.max_tasks = max_tasks  # 0: no limit
        self.limit = 1  # the next claim's size while slots allow it
        self.slow_streak = 0  # slow tasks in a row
        self.backlog = False  # the last claim got all it asked for

    def next_limit(self, *, done: int, ahead: int, stopping: bool) -> int:
        """How many to claim now: none when stopping; with ``max_tasks``, only the free slots
        (``done`` ran already, ``ahead`` are claimed and waiting or in flight)."""
        if stopping:
            return 0
        if not self.max_tasks:
            return self.limit
        return max(0, min(self.limit, self.max_tasks - done - ahead))

    def spent(self, done: int) -> bool:
        """``max_tasks`` ran: the process is recycled."""
        return bool(self.max_tasks) and done >= self.max_tasks

    def prefetching(self, stopping: bool) -> bool:
        """Claim the next batch ahead: only while tasks are fast (the claim grew past one)
        and there is a backlog (the last claim came back full; a trickle gains nothing)."""
        return self.limit > 1 and self.backlog and not stopping

    def claimed(self, got: int, asked: int) -> None:
        """A claim of ``asked`` tasks committed with ``got`` rows."""
        if asked:
            self.backlog = got >= asked

    def finished(self, seconds: float, queued: int) -> bool:
        """A task ran for ``seconds`` (``queued`` still wait); True: hand the prefetch back.

        Fast: the claim doubles once the batch is done. Slow: back to one, and
        on the second slow task in a row the prefetched batch goes back.
        """
        if seconds * 1000 <= self.fast_task_ms:
            self.slow_streak = 0
            if not queued:
                self.limit = min(self.limit * 2, self.batch_size)
            return False
        self.limit = 1
        self.slow_streak += 1
        return self.slow_streak >= 2


class Producer:
    """The claimed tasks of one child, in claim order: refilled, prefetched, handed back."""

    def __init__(
        self,
        config: WorkerConfig,
        exchange: Exchange,
        completer: Completer,
        done: Callable[[], int],
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.policy = ClaimPolicy(config.batch_size, config.fast_task_ms, config.max_tasks)
        self.poll_interval = config.poll_interval
        self.exchange = exchange
        self.completer = completer
        self.done = done  # tasks run so far
        self.gone = gone  # the supervisor died
        self.queue: deque[Claim] = deque()
        self.wake = threading.Event()
        self.stopping = False  # a plain flag: SIGTERM's handler sets it
        self.reopens: float | None = None  # the last claim's rate-window hint, seconds
        self.metrics = metrics.BatchMetrics()

    def start(self) -> None:
        """Send the first claim; the first ``next`` reads it (nothing when already stopping)."""
        self.send(self.next_limit())

    def stop(self) -> None:
        """Claim no more; hand back every claimed task that has not run, prefetched ones too."""
        self.stopping = True
        if self.exchange.busy:
            self.queue.extend(self.receive())
        while self.queue:
            self.completer.release(self.queue.popleft())

    def on_wakeup(self, queue: str | None) -> None:
        """A task became due in one of our queues, or notifications may have been missed."""
        self.wake.set()

    def next(self) -> Claim | None:
        """The next task to run, claiming when none is left; None when none came in time."""
        queue, exchange = self.queue, self.exchange
        if not queue:
            if exchange.inflight is not None:
                queue.extend(self.receive())
            elif not self.gone():  # checked per batch, not per task: a syscall
                self.refill()
            if not queue:
                return None
        if exchange.inflight is None:
            if self.policy.prefetching(self.stopping):
                self.send(self.next_limit())
            elif self.completer.due():
                self.send(0)
        elif len(queue) % 128 == 0:
            exchange.poll()
        return queue.popleft()

    def next_limit(self) -> int:
        """The policy's claim size, given what is queued and in flight."""
        ahead = len(self.queue) + self.exchange.claiming
        return self.policy.next_limit(done=self.done(), ahead=ahead, stopping=self.stopping)

    def refill(self) -> None:
        """Write pending outcomes and claim the next batch; if none is due, wait for a wake-up."""
        self.wake.clear()
        limit = self.next_limit()
        self.send(limit)
        if self.exchange.busy:
            self.queue.extend(self.receive())
        if self.queue or limit == 0:
            return
        # Nothing due: sleep until a notification, the poll interval, or a full
        # rate window of ours opening (no NOTIFY marks that). The wait is chunked
        # because signal handlers must not touch the Event's lock (SIGTERM only sets a flag).
        pause = self.poll_interval
        if self.reopens is not None:
            pause = min(pause, self.reopens)
        deadline = time.monotonic() + pause
        while not self.stopping and not self.gone():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.wake.wait(min(remaining, 0.25)):
                break

    def send(self, limit: int) -> None:
        """Send the completer's batch and a claim of ``limit`` (after reading the last reply)."""
        if self.exchange.busy:
            self.queue.extend(self.receive())
        if limit == 0 and not self.completer.pending:
            return
        self.exchange.send(self.completer.take(), limit)

    def receive(self) -> list[Claim]:
        """Wait for the exchange in flight; its claimed rows (not yet queued to run)."""
        reply = self.exchange.receive()
        self.reopens = reply.reopens
        self.completer.settled(reply)
        if reply.failed is not None:
            self.policy.claimed(len(reply.rows), reply.limit)
        if metrics.ENABLED:
            for row in reply.rows:
                self.metrics.claimed(row.queue, row.waited)
            self.metrics.flush()
        return reply.rows

    def hand_back(self) -> None:
        """Tasks turned slow: give the prefetched batch back at once, so others can run it."""
        if not self.exchange.busy:
            return
        for row in self.receive():
            self.completer.release(row)
        self.send(0)
