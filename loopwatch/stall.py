"""A stall as the watchdog builds it, and how its cause is decided."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from opentelemetry import trace

from .heartbeat import Tick
from .inflight import AnyRequest, InFlight
from .sampler import RawFrame, Sample
from .stacks import function_name

CPU = "cpu"
BLOCKING = "blocking"
GC = "gc"
GIL = "gil"
UNSCHEDULED = "unscheduled"
CAUSES = (CPU, BLOCKING, GC, GIL, UNSCHEDULED)
"""``cpu``: Python code ran on the loop. ``blocking``: the loop thread waited (sleep,
blocking I/O, a lock). ``gc``: garbage collection took most of the stall. ``gil``: a C call
held the GIL, so no sample could be taken during it. ``unscheduled``: the process was not
running (stopped, starved of CPU, a paused VM)."""


@dataclass
class TakenSample:
    """A sample, whether the watchdog took it on time (not held off by the GIL), and the
    task that was running then: its name, its current span and its request."""

    sample: Sample
    culprit: RawFrame | None
    on_time: bool
    task_name: str | None = None
    span: trace.Span | None = None
    request: AnyRequest | None = None


@dataclass
class Stall:
    """One stall of the loop, from detection (or from the tick that revealed it) to its end.

    ``number`` tells stalls of one watcher apart (requests record which they paid for);
    ``in_flight`` are the requests served meanwhile (found when it was detected, or when
    it ended if it was not seen live).
    """

    start: float
    number: int = 0
    samples: list[TakenSample] = field(default_factory=list)
    suppressed: bool = False
    watchdog_held_off: bool = False
    end: float | None = None
    cause: str = CPU
    runnable_share: float | None = None
    in_flight: InFlight | None = None

    @property
    def on_time_samples(self) -> list[TakenSample]:
        return [taken for taken in self.samples if taken.on_time]

    def chosen_sample(self) -> TakenSample | None:
        """The on-time sample whose culprit was seen most often (the first one on a tie)."""
        candidates = self.on_time_samples
        if not candidates:
            return None
        counts = Counter(_culprit_key(taken) for taken in candidates)
        best = max(counts.values())
        return next(taken for taken in candidates if counts[_culprit_key(taken)] == best)

    def resumed_sample(self) -> TakenSample | None:
        """The first sample taken after the watchdog was held off (``gil`` stalls)."""
        return self.samples[0] if self.samples else None

    @property
    def _context_sample(self) -> TakenSample | None:
        """Whose task the stall belongs to: the chosen sample's, else the first one's."""
        return self.chosen_sample() or self.resumed_sample()

    @property
    def task_name(self) -> str | None:
        taken = self._context_sample
        return taken.task_name if taken else None

    @property
    def span(self) -> trace.Span | None:
        taken = self._context_sample
        return taken.span if taken else None

    @property
    def request(self) -> AnyRequest | None:
        taken = self._context_sample
        return taken.request if taken else None

    def classify(self, before: Tick, after: Tick) -> str:
        """Decide the cause from the counters of the ticks around the stall.

        "Busy" is the loop thread's share of the stall spent running or queued for a CPU
        (Linux schedstat, set by the watchdog), else its CPU share.
        """
        window = max(after.ran - before.ran, 1e-9)
        duration = max((self.end or after.ran) - self.start, 1e-9)
        if after.gc_total - before.gc_total >= 0.5 * duration:
            return GC
        thread_share = (after.thread_cpu - before.thread_cpu) / window
        busy = self.runnable_share if self.runnable_share is not None else thread_share
        if self.watchdog_held_off and not self.on_time_samples:
            process_share = (after.process_cpu - before.process_cpu) / window
            return GIL if max(process_share, busy) >= 0.5 else UNSCHEDULED
        return CPU if busy >= 0.5 else BLOCKING


def _culprit_key(taken: TakenSample) -> str:
    return function_name(taken.culprit) if taken.culprit else ""
