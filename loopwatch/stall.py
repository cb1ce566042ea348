"""A stall as the watchdog builds it, and how its cause is decided."""

from __future__ import annotations

import dis
import functools
import sys
from collections import Counter
from dataclasses import dataclass, field
from types import CodeType

from opentelemetry import trace

from .gc_clock import Collection
from .heartbeat import Tick
from .inflight import AnyRequest, InFlight
from .sampler import RawFrame, Sample, split_own_frames
from .stacks import CulpritFinder, function_name

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

DURING = "during"
AFTER = "after"
COLLECTION = "collection"
"""How a culprit was found (``loopwatch.culprit.sampled``): ``during``, sampled while the
loop was stalled; ``after``, the first sample after the loop resumed, still in the same
callback (a C call held the GIL: the loop thread resumes in the frame that made it);
``collection``, noted by the garbage collector's callback as the collection began."""


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
    watchdog_waited_for_gil: bool = False
    """Held off by a thread holding the GIL, not by a process that was not running."""
    end: float | None = None
    cause: str = CPU
    runnable_share: float | None = None
    in_flight: InFlight | None = None
    live_cause: str | None = None
    """The cause given while the stall went on (``None`` if it was not seen live)."""
    collection: Collection | None = None
    """The garbage collection on the loop's thread that overlapped a ``gc`` stall."""
    found: tuple[TakenSample, str] | None = None
    """The sample that names the culprit, and how it was found (:data:`DURING`...)."""
    gc_seconds: float = 0.0
    busy_share: float = 0.0
    process_share: float = 0.0

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
        self.gc_seconds = after.gc_total - before.gc_total
        thread_share = (after.thread_cpu - before.thread_cpu) / window
        busy = self.runnable_share if self.runnable_share is not None else thread_share
        self.busy_share = busy
        self.process_share = (after.process_cpu - before.process_cpu) / window
        if self.gc_seconds >= 0.5 * duration:
            return GC
        if self.watchdog_held_off and not self.on_time_samples:
            running = self.watchdog_waited_for_gil or max(self.process_share, busy) >= 0.5
            return GIL if running else UNSCHEDULED
        return CPU if busy >= 0.5 else BLOCKING

    def revision(self) -> str | None:
        """Why the cause differs from the one given while the stall went on, if it does."""
        live, cause = self.live_cause, self.cause
        if live is None or live == cause or self.end is None:
            return None
        duration = self.end - self.start
        reasons = {
            GC: f"garbage collection took {self.gc_seconds:.3f} s of the {duration:.3f} s stall",
            GIL: "the watchdog waited for the GIL while it lasted",
            UNSCHEDULED: f"the process ran {self.process_share:.0%} of the stall",
            CPU: f"the loop thread ran (or waited for a CPU) {self.busy_share:.0%} of the stall",
            BLOCKING: f"the loop thread ran only {self.busy_share:.0%} of the stall",
        }
        return f"cause revised from {live} to {cause}: {reasons.get(cause, '')}".rstrip(": ")

    def find_culprit(self, finder: CulpritFinder) -> None:
        """Set :attr:`culprit` from the samples, the cause and the collection.

        ``gc``: the code that triggered the collection on the loop's thread, never what
        ran after it ended. Otherwise the culprit seen most often while the stall lasted;
        failing that, for ``gil``, the first sample after the loop resumed: the watchdog
        takes it as soon as it gets the GIL, and the loop thread hands it over at its
        first check after the C call returned, in the frame that made the call (samples
        taken after another tick ran are discarded).
        """
        self.found = None
        if self.cause == GC:
            if self.collection is not None:
                self.found = (self._collection_sample(self.collection, finder), COLLECTION)
            return
        chosen = self.chosen_sample()
        if chosen is not None:
            self.found = (chosen, DURING)
            return
        resumed = self.resumed_sample()
        if self.cause == GIL and resumed is not None and not resumed.on_time:
            self.found = (resumed, AFTER)

    def _collection_sample(self, collection: Collection, finder: CulpritFinder) -> TakenSample:
        """The stack that triggered ``collection``: the noted frame, with its callers as a
        sample taken inside the collection's callbacks shows them (else alone)."""
        trigger = RawFrame(collection.code, collection.line, collection.module)
        frames: tuple[RawFrame, ...] = (trigger,)
        truncated = True
        context = self._context_sample
        for taken in self.samples:
            found = taken.sample.frames
            index = next((i for i, f in enumerate(found) if f.code is collection.code), None)
            if index is not None:
                frames = (trigger, *found[index + 1 :])
                truncated, context = taken.sample.truncated, taken
                break
        if len(frames) > 1 and _at_entry(collection.code, collection.lasti):
            frames = frames[1:]  # it ran as the function began: its caller's allocation
        sample, _ = split_own_frames(Sample(frames, truncated))
        return TakenSample(
            sample,
            finder.culprit(sample),
            False,
            context.task_name if context else None,
            context.span if context else None,
            context.request if context else None,
        )


def _culprit_key(taken: TakenSample) -> str:
    return function_name(taken.culprit) if taken.culprit else ""


@functools.lru_cache(maxsize=1024)
def _first_resume(code: CodeType) -> int:
    return next((i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"), -1)


def _at_entry(code: CodeType, lasti: int) -> bool:
    """Whether a collection ran as ``code`` began. From Python 3.12 on, an allocation only
    schedules a collection, which runs at the next check of the eval loop; at a function's
    first ``RESUME`` that check belongs to the call its caller just made."""
    return sys.version_info >= (3, 12) and lasti == _first_resume(code)
