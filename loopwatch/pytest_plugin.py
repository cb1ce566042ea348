"""pytest plugin: a test fails when its event loop stalls longer than a threshold.

Off unless asked for, per run or per test::

    pytest --loopwatch            # threshold 100 ms
    pytest --loopwatch=0.05       # seconds, or "50ms"; "--loopwatch=off" turns it all off

    [pytest]                      # or [tool.pytest.ini_options]
    loopwatch = true
    loopwatch_threshold = 0.05
    loopwatch_allow =
        myapp.startup:load_settings
        tests.helpers:*

    @pytest.mark.loopwatch(threshold=0.05, allow=["myapp.cache:warm_up"])
    async def test_something(): ...

(In pytest 9's native ``[tool.pytest]`` table, quote the threshold: ``"0.05"``.)

``@pytest.mark.loopwatch`` turns watching on for the tests it marks (``enabled=False``
turns it off); its ``threshold`` wins over ``--loopwatch=...``, which wins over the ini
file. ``pytest -p no:loopwatch`` unloads the plugin.

A stall is reported with its duration, culprit (the innermost application frame), offender
(the innermost frame), cause and the sampled stack, trimmed to the frames below the test
or fixture. Stalls during the setup of the test's fixtures fail the test itself; stalls in
fixture teardown make the teardown fail. A module- or session-scoped fixture counts for
the test during whose setup (or teardown) it runs. Stalls inside ``loopwatch.suppress()``
are not reported by loopwatch at all.

Allow-list entries are ``module:function``, matched against the culprit's
``module.qualname``: exactly, for anything nested below it (``mod:Class`` allows its
methods, ``mod:func`` its inner functions), or with ``*`` wildcards. Entries come from the
ini option and from the ``allow`` of every ``loopwatch`` marker that applies to a test. At
the end of the run, an entry in force for a test that ran on a watched loop and that never
matched a stall produces a ``LoopwatchWarning`` (``-W error`` makes it fail the run); with
pytest-xdist the controller decides, over all workers. Before Python 3.11 the culprit has
no class in its name (code objects have no qualified name): write ``mod:method``.

How it attaches to the loop: pytest-asyncio and anyio both run a test, and each async
fixture, by calling the coroutine function that pytest holds (``item.obj``,
``fixturedef.func``) on their own loop, whatever the loop is (stdlib, uvloop, any policy,
``loop_factory`` or loop scope). While a watched test is set up, run and torn down, the
plugin substitutes those functions with wrappers that, on the loop, start a
:class:`~loopwatch.LoopWatch` on the running loop, yield once so that its heartbeat ticks
before the test's own code runs, run the original, then sleep until the overdue heartbeat
tick after a final stall has run (1 ms on uvloop, 1 µs on the stdlib loop) and stop the
watcher, which reports a stall that just ended. A watcher so exists only while the loop
runs the test's code: none is left on a loop that is stopped between a fixture and the
test (the core would count the stopped time as a stall when the loop resumes into a busy
step), and no thread outlives the test.
Sync tests and sync fixtures are never touched. Not covered: loops a sync test runs itself
(``asyncio.run`` in a test), ``unittest.IsolatedAsyncioTestCase``, hypothesis async tests,
trio. The watchers report to the test only: no spans or metrics reach the OpenTelemetry
providers the tests may use; the core's WARNING log line is kept (captured with the test).

Costs: the extra ``await asyncio.sleep(0)`` before a watched coroutine lets callbacks that
are already scheduled run first. Each watched coroutine (test, fixture setup, fixture
teardown) starts and joins a watchdog thread, about 1 ms (2 ms on uvloop).
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import os
import re
import sys
import threading
import types
import warnings
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import metrics, trace

from .config import resolve_config
from .events import BlockEvent, FrameInfo
from .watcher import LoopWatch

__all__ = ["LoopwatchWarning"]

DEFAULT_THRESHOLD = 0.1
"""Seconds; used when neither the marker, the command line nor the ini file sets one."""

SETTLE_DELAY = 0.001
"""How long a wrapper sleeps after the watched code, so the overdue heartbeat ticks first:
a timer due later than the heartbeat's. uvloop rounds timers to 1 ms (and runs shorter ones
as soon as possible); the stdlib loop orders any later timer after it."""

MAX_STACK_CHARS = 32_768
MAX_REPORTED_STALLS = 5
TEST_RUNNER_MODULES = (
    *("__main__", "runpy", "_pytest", "pytest", "pluggy", "pytest_asyncio"),
    "backports.asyncio.runner",  # pytest-asyncio's asyncio.Runner on Python 3.10
)
"""Never the culprit, in addition to loopwatch's own list: the machinery that runs the test."""


_NO_TRACES = trace.NoOpTracerProvider()
_NO_METRICS = metrics.NoOpMeterProvider()
"""The plugin's watchers report to the test only: no spans or metrics in the providers
that the tests under watch may set up and inspect."""


class LoopwatchWarning(pytest.PytestWarning):
    """A loopwatch allow-list entry that never matched a stall."""


# --- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    """One allow-list entry, ``module:function``, and where it was written."""

    entry: str
    origin: str
    pattern: str
    file: str = ""
    line: int = 0

    @classmethod
    def parse(cls, entry: str, origin: str, file: str = "", line: int = 0) -> Allow:
        module, sep, function = entry.strip().partition(":")
        if not sep or not module or not function or ":" in function:
            raise ValueError(
                f"loopwatch allow entry {entry!r} ({origin}) is not module:function, "
                f"e.g. 'myapp.db:connect'"
            )
        return cls(entry.strip(), origin, f"{module}.{function}", file, line)

    def matches(self, function: str) -> bool:
        """Whether a culprit named ``function`` (``module.qualname``) is allowed."""
        return fnmatch.fnmatchcase(function, self.pattern) or fnmatch.fnmatchcase(
            function, self.pattern + ".*"
        )


@dataclass(frozen=True)
class Settings:
    """The run-wide settings from the command line and the ini file."""

    enabled: bool
    off: bool
    threshold: float | None
    allow: tuple[Allow, ...]


def parse_threshold(raw: str, source: str) -> float:
    """Seconds from ``"0.05"``, ``"0.05s"`` or ``"50ms"``, checked against loopwatch's range."""
    text = raw.strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        raise ValueError(
            f"{source}={raw!r} is not a duration; use seconds (0.05) or milliseconds (50ms)"
        ) from None
    return checked_threshold(value, source)


@functools.lru_cache(maxsize=1024)
def _line_of(path: str, text: str) -> int:
    """The line of ``path`` that mentions ``text`` (1-based), 0 if unknown."""
    try:
        with open(path, encoding="utf-8") as file:
            return next((number for number, line in enumerate(file, 1) if text in line), 0)
    except OSError:
        return 0


def checked_threshold(value: float, source: str) -> float:
    try:
        return resolve_config(threshold=value).threshold
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def read_settings(config: pytest.Config) -> Settings:
    raw = config.getoption("loopwatch")
    ini_raw = str(config.getini("loopwatch_threshold") or "").strip()
    off = isinstance(raw, str) and raw.strip().lower() == "off"
    try:
        threshold = parse_threshold(ini_raw, "loopwatch_threshold") if ini_raw else None
        if isinstance(raw, str) and raw.strip() and not off:
            try:
                threshold = parse_threshold(raw, "--loopwatch")
            except ValueError as error:
                raise ValueError(
                    f"{error}. If that is a path, write --loopwatch=THRESHOLD or put "
                    f"--loopwatch after the paths"
                ) from None
        ini = str(config.inipath or "")
        allow = tuple(
            Allow.parse(entry, "ini loopwatch_allow", ini, _line_of(ini, entry.strip()))
            for entry in config.getini("loopwatch_allow")
            if entry.strip()
        )
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    enabled = not off and (raw is not None or bool(config.getini("loopwatch")))
    return Settings(enabled, off, threshold, allow)


@dataclass(frozen=True)
class Policy:
    """How one test is watched; ``error`` is a bad marker, reported as a setup failure."""

    active: bool
    threshold: float = DEFAULT_THRESHOLD
    allow: tuple[Allow, ...] = ()
    error: str | None = None


def policy_for(item: pytest.Item, settings: Settings) -> Policy:
    """Settings, overridden by the ``loopwatch`` markers on the test (closest first)."""
    if settings.off:
        return Policy(active=False)
    marks = list(item.iter_markers_with_node("loopwatch"))
    active = settings.enabled
    threshold = settings.threshold
    allow = list(settings.allow)
    try:
        if marks:
            active = bool(marks[0][1].kwargs.get("enabled", True))
        threshold_set = False
        for node, mark in marks:
            given, entries = _marker_arguments(mark, item.nodeid)
            if given is not None and not threshold_set:
                threshold, threshold_set = given, True
            origin = f"marker on {_marker_origin(node)}"
            path = str(node.path)
            allow.extend(Allow.parse(e, origin, path, _line_of(path, e)) for e in entries)
        if not active:
            return Policy(active=False)
        if threshold is None:
            threshold = checked_threshold(DEFAULT_THRESHOLD, "threshold")
    except ValueError as error:
        return Policy(active=True, error=str(error))
    return Policy(True, threshold, tuple(allow))


def _marker_arguments(mark: pytest.Mark, nodeid: str) -> tuple[float | None, list[str]]:
    unknown = set(mark.kwargs) - {"threshold", "allow", "enabled"}
    if unknown or len(mark.args) > 1 or (mark.args and "threshold" in mark.kwargs):
        raise ValueError(
            f"{nodeid}: @pytest.mark.loopwatch takes threshold (seconds), allow "
            f"(['module:function', ...]) and enabled; got args={mark.args!r}, "
            f"kwargs={mark.kwargs!r}"
        )
    raw = mark.args[0] if mark.args else mark.kwargs.get("threshold")
    threshold: float | None = None
    if isinstance(raw, str):
        threshold = parse_threshold(raw, "loopwatch(threshold)")
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        threshold = checked_threshold(float(raw), "loopwatch(threshold)")
    elif raw is not None:
        raise ValueError(f"{nodeid}: loopwatch(threshold={raw!r}) is not a number of seconds")
    entries = mark.kwargs.get("allow", ())
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, Iterable) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"{nodeid}: loopwatch(allow={entries!r}) must be a list of strings")
    return threshold, list(entries)


def _marker_origin(node: pytest.Item | pytest.Collector | Any) -> str:
    """Where a marker was written: parametrized copies of one function share it."""
    original = getattr(node, "originalname", None)
    parent = getattr(node, "parent", None)
    if isinstance(node, pytest.Function) and original and parent is not None:
        return f"{parent.nodeid}::{original}"
    return str(node.nodeid)


# --- per-test state ---------------------------------------------------------------------


@dataclass
class Stall:
    """A reported stall and where it happened."""

    phase: str
    where: str
    event: BlockEvent
    finished: bool


@dataclass
class Run:
    """The watched test whose setup, call or teardown is in progress."""

    item: pytest.Item
    policy: Policy
    phase: str = "setup"
    watched_loop: bool = False
    stalls: list[Stall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stall: Stall) -> None:
        with self.lock:
            self.stalls.append(stall)

    def take(self, phases: Sequence[str]) -> list[Stall]:
        with self.lock:
            taken = [stall for stall in self.stalls if stall.phase in phases]
            self.stalls = [stall for stall in self.stalls if stall.phase not in phases]
        return taken


class Recorder:
    """The ``on_block`` hook of one watcher: keeps finished stalls, remembers an open one."""

    def __init__(self, run: Run, where: str) -> None:
        self.run = run
        self.phase = run.phase
        self.where = where
        self.open: BlockEvent | None = None

    def __call__(self, event: BlockEvent) -> None:  # on the watchdog thread
        if event.end is None:
            self.open = event
            return
        self.open = None
        self.run.add(Stall(self.phase, self.where, event, finished=True))

    def close(self) -> None:
        """After the watcher stopped: a stall whose end was never seen is kept as is."""
        event, self.open = self.open, None
        if event is not None:
            self.run.add(Stall(self.phase, self.where, event, finished=False))


@dataclass
class Plugin:
    """Everything the plugin keeps for one pytest run (in ``config.stash``)."""

    settings: Settings
    current: Run | None = None
    loops: set[asyncio.AbstractEventLoop] = field(default_factory=set)
    active: int = 0
    watched: int = 0
    failed: int = 0
    allowed: int = 0
    allow_used: dict[tuple[str, str], Allow | None] = field(default_factory=dict)
    """Every allow entry in force during the run; ``None`` once it matched a stall."""
    errors: list[str] = field(default_factory=list)

    def register(self, entries: Iterable[Allow]) -> None:
        """Entries in force for a test that ran on a watched loop (kept if already matched)."""
        for entry in entries:
            self.allow_used.setdefault((entry.origin, entry.entry), entry)

    def export(self) -> dict[str, Any]:
        """The counts and allow entries of an xdist worker, for the controller."""
        return {
            "counts": [self.active, self.watched, self.failed, self.allowed],
            "allow": [
                [origin, entry, allow.file if allow else "", allow.line if allow else 0, not allow]
                for (origin, entry), allow in self.allow_used.items()
            ],
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's :meth:`export`: an entry is unused if no worker matched it."""
        active, watched, failed, allowed = data["counts"]
        self.active += active
        self.watched += watched
        self.failed += failed
        self.allowed += allowed
        for origin, entry, file, line, used in data["allow"]:
            if used:
                self.allow_used[(origin, entry)] = None
            else:
                self.allow_used.setdefault((origin, entry), Allow.parse(entry, origin, file, line))

    def split(self, run: Run, stalls: list[Stall]) -> list[Stall]:
        """The stalls not covered by the allow-list; marks the entries that matched."""
        blocking = []
        for stall in stalls:
            culprit = stall.event.culprit
            matched = [a for a in run.policy.allow if culprit and a.matches(culprit.function)]
            for entry in matched:
                self.allow_used[(entry.origin, entry.entry)] = None
            if matched:
                self.allowed += 1
            else:
                blocking.append(stall)
        return blocking


PLUGIN_KEY = pytest.StashKey[Plugin]()


# --- hooks ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopwatch", "event loop stall detection (loopwatch)")
    group.addoption(
        "--loopwatch",
        nargs="?",
        const="",
        default=None,
        metavar="THRESHOLD",
        help=(
            "fail async tests whose event loop stalls longer than THRESHOLD "
            f"(seconds or e.g. 50ms; default {DEFAULT_THRESHOLD:g} s); "
            "--loopwatch=off disables it, markers included"
        ),
    )
    parser.addini("loopwatch", "turn loopwatch on for every test", type="bool", default=False)
    parser.addini(
        "loopwatch_threshold",
        f"loopwatch stall threshold (seconds or e.g. 50ms; default {DEFAULT_THRESHOLD:g} s)",
        type="string",
        default="",
    )
    parser.addini(
        "loopwatch_allow",
        "culprits (module:function, one a line) whose stalls do not fail tests",
        type="linelist",
        default=[],
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """``pytest --loopwatch tests/``: keep ``tests/`` a path, not the threshold."""
    for index, arg in enumerate(args[:-1]):
        if arg == "--":
            break
        if arg == "--loopwatch" and not _is_threshold(args[index + 1]):
            args[index] = "--loopwatch="


def _is_threshold(token: str) -> bool:
    """Whether ``token`` is meant as the option's value (checked later, with a clear error)."""
    number = r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?"
    return re.fullmatch(rf"\s*(off|{number}\s*(ms|s)?)\s*", token, re.IGNORECASE) is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "loopwatch(threshold=None, allow=(), enabled=True): fail the test if its event loop "
        "stalls longer than threshold seconds; allow: culprits (module:function) to ignore",
    )
    config.stash[PLUGIN_KEY] = Plugin(read_settings(config))


def pytest_report_header(config: pytest.Config) -> str | None:
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or not plugin.settings.enabled:
        return None
    threshold = plugin.settings.threshold or DEFAULT_THRESHOLD
    return f"loopwatch: threshold {threshold:g} s, {len(plugin.settings.allow)} allow-list entries"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    plugin = item.config.stash.get(PLUGIN_KEY, None)
    policy = policy_for(item, plugin.settings) if plugin is not None else None
    if plugin is None or policy is None or not policy.active:
        return (yield)
    plugin.active += 1
    plugin.current = run = Run(item, policy)
    try:
        return (yield)
    finally:
        plugin.current = None
        if run.watched_loop:  # entries of tests without an event loop could not match
            plugin.watched += 1
            plugin.register(policy.allow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    plugin, run = _current(item.config)
    if plugin is None or run is None:
        return (yield)
    run.phase = "setup"
    if run.policy.error:
        pytest.fail(run.policy.error, pytrace=False)
    try:
        return (yield)
    except BaseException:
        _add_section(plugin, run, "setup", ("setup",))
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    plugin, run = _current(item.config)
    if plugin is None or run is None:
        return (yield)
    run.phase = "call"
    with pytest.MonkeyPatch.context() as patch:
        if isinstance(item, pytest.Function) and _is_async(item.obj):
            patch.setattr(item, "obj", _watched(item.obj, plugin, "the test"))
        try:
            result = yield
        except BaseException:
            _add_section(plugin, run, "call", ("setup", "call"))
            raise
    _fail_on_stalls(plugin, run, ("setup", "call"))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    plugin, run = _current(item.config)
    if plugin is None or run is None:
        return (yield)
    run.phase = "teardown"
    try:
        result = yield
    except BaseException:
        _add_section(plugin, run, "teardown", ("setup", "call", "teardown"))
        raise
    _fail_on_stalls(plugin, run, ("setup", "call", "teardown"))
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    # tryfirst: the outermost wrapper, so pytest-asyncio's and anyio's wrappers see ours.
    plugin, run = _current(request.config)
    func = fixturedef.func
    if plugin is None or run is None or not _is_async(func):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        where = f"fixture {fixturedef.argname!r}"  # async generators add setup/teardown
        where += "" if inspect.isasyncgenfunction(func) else " setup"
        patch.setattr(fixturedef, "func", _watched(func, plugin, where))
        return (yield)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    plugin = session.config.stash.get(PLUGIN_KEY, None)
    if plugin is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller sums up the run
        workeroutput["loopwatch"] = plugin.export()
        return
    for allow in plugin.allow_used.values():
        if allow is None:
            continue
        message = (
            f"loopwatch allow-list entry {allow.entry!r} ({allow.origin}) never matched a "
            f"stall in this run; remove it if it is stale"
        )
        try:  # recorded by pytest's warnings plugin, shown in the warnings summary
            warnings.warn_explicit(
                LoopwatchWarning(message), LoopwatchWarning, allow.file or "loopwatch", allow.line
            )
        except LoopwatchWarning:  # -W error: an error of the run
            plugin.errors.append(message)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, on the controller: a worker finished."""
    plugin = node.config.stash.get(PLUGIN_KEY, None)
    data = getattr(node, "workeroutput", {}).get("loopwatch")
    if plugin is not None and data:
        plugin.merge(data)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or not plugin.active:
        return
    terminalreporter.write_sep("-", "loopwatch")
    threshold = plugin.settings.threshold or DEFAULT_THRESHOLD
    terminalreporter.write_line(
        f"{plugin.watched} of {plugin.active} tests ran on a watched event loop "
        f"(threshold {threshold:g} s unless a marker says otherwise); "
        f"{plugin.failed} failed by a stall, {plugin.allowed} stalls allowed"
    )
    for message in plugin.errors:
        terminalreporter.write_line(f"ERROR: {message}", red=True)


# --- watching the loop ------------------------------------------------------------------


def _current(config: pytest.Config) -> tuple[Plugin | None, Run | None]:
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.current is None:
        return plugin, None
    return plugin, plugin.current


def _is_async(func: object) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


def _watched(func: Callable[..., Any], plugin: Plugin, where: str) -> Callable[..., Any]:
    """``func`` (a coroutine or async generator function) run under a watcher of its loop."""
    if isinstance(func, types.MethodType):  # keep it a method: pytest re-binds fixtures
        return types.MethodType(_watched(func.__func__, plugin, where), func.__self__)
    if inspect.isasyncgenfunction(func):
        return _watched_asyncgen(func, plugin, where)
    return _watched_coroutine(func, plugin, where)


def _watched_coroutine(
    func: Callable[..., Coroutine[Any, Any, Any]], plugin: Plugin, where: str
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(func)
    async def loopwatch_watched(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        async with Watching(plugin, where):
            return await func(*args, **kwargs)

    return loopwatch_watched


def _watched_asyncgen(
    func: Callable[..., AsyncGenerator[Any]], plugin: Plugin, where: str
) -> Callable[..., AsyncGenerator[Any]]:
    @functools.wraps(func)
    async def loopwatch_watched(*args: Any, **kwargs: Any) -> AsyncGenerator[Any]:
        __tracebackhide__ = True
        inner = func(*args, **kwargs)
        try:
            async with Watching(plugin, f"{where} setup"):
                value = await inner.__anext__()
        except StopAsyncIteration:
            return
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                await inner.aclose()
                raise
            except BaseException as error:
                step = inner.athrow(error)
            else:
                step = inner.asend(sent)
            try:
                async with Watching(plugin, f"{where} teardown"):
                    value = await step
            except StopAsyncIteration:
                return

    return loopwatch_watched


class Watching:
    """Watch the running loop for the test in progress, unless a watcher already does."""

    def __init__(self, plugin: Plugin, where: str) -> None:
        self._plugin = plugin
        self._where = where
        self._owned: tuple[asyncio.AbstractEventLoop, LoopWatch, Recorder] | None = None

    async def __aenter__(self) -> None:
        run = self._plugin.current
        if run is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not an asyncio loop (trio)
            return
        if loop in self._plugin.loops:
            return
        recorder = Recorder(run, self._where)
        watcher = LoopWatch(
            run.policy.threshold,
            on_block=recorder,
            tracer_provider=_NO_TRACES,
            meter_provider=_NO_METRICS,
            measure_utilization=False,
            max_stack_chars=MAX_STACK_CHARS,
            skip_modules=_skip_modules(),
        )
        watcher.start(loop)
        if not watcher.running:  # LOOPWATCH_ENABLED=0
            return
        self._plugin.loops.add(loop)
        self._owned = loop, watcher, recorder
        run.watched_loop = True
        try:
            await asyncio.sleep(0)  # the heartbeat's first tick runs before the watched code
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owned is None:
            return
        loop, _, recorder = self._owned
        try:
            await self._settle(loop, recorder)
        finally:
            self._release()

    @staticmethod
    async def _settle(loop: asyncio.AbstractEventLoop, recorder: Recorder) -> None:
        """Let a stall that just ended (or a callback the test left queued) be closed.

        The heartbeat tick that ends a stall is overdue, so it runs before a timer set
        after the stall; stop() then reports the stall. A stall the watchdog saw start
        gets a few more rounds.
        """
        delay = 1e-6 if isinstance(loop, asyncio.BaseEventLoop) else SETTLE_DELAY
        await asyncio.sleep(0)  # callbacks already queued run first
        for _ in range(5):
            await asyncio.sleep(delay)
            if recorder.open is None:
                return

    def _release(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            loop, watcher, recorder = owned
            watcher.stop()
            self._plugin.loops.discard(loop)
            recorder.close()


# --- reporting ------------------------------------------------------------------------


def _fail_on_stalls(plugin: Plugin, run: Run, phases: Sequence[str]) -> None:
    stalls = plugin.split(run, run.take(phases))
    if stalls:
        plugin.failed += 1
        pytest.fail(describe(stalls, run.policy.threshold), pytrace=False)


def _add_section(plugin: Plugin, run: Run, when: str, phases: Sequence[str]) -> None:
    """The test failed anyway: show the stalls next to its own error."""
    stalls = plugin.split(run, run.take(phases))
    if stalls:
        run.item.add_report_section(when, "loopwatch", describe(stalls, run.policy.threshold))


def describe(stalls: Sequence[Stall], threshold: float) -> str:
    """The failure message: a summary line, then each stall (up to a few)."""
    if len(stalls) == 1:
        head = f"loopwatch: {_headline(stalls[0], threshold)}"
    else:
        longest = max(stall.event.duration for stall in stalls)
        head = (
            f"loopwatch: {len(stalls)} event loop stalls over the threshold "
            f"({threshold:g} s), the longest {longest:.3f} s"
        )
    parts = [head]
    for index, stall in enumerate(stalls[:MAX_REPORTED_STALLS], 1):
        if len(stalls) > 1:
            parts.append(f"\n[{index}] {_headline(stall, threshold)}")
        parts.append(_details(stall))
    if len(stalls) > MAX_REPORTED_STALLS:
        parts.append(f"\n... and {len(stalls) - MAX_REPORTED_STALLS} more stalls")
    return "\n".join(parts)


def _headline(stall: Stall, threshold: float) -> str:
    duration = f"{stall.event.duration:.3f} s"
    if not stall.finished:
        duration = f"at least {duration} (its end was not seen)"
    return f"event loop blocked for {duration} in {stall.where} (threshold {threshold:g} s)"


def _details(stall: Stall) -> str:
    event = stall.event
    task = f", task {event.task_name}" if event.task_name else ""
    lines = [
        f"    duration: {event.duration:.3f} s",
        f"    culprit:  {event.culprit or _no_culprit(event)}",
        f"    offender: {event.offender or '-'}",
        f"    cause:    {event.cause} ({event.samples} sample{'' if event.samples == 1 else 's'}"
        f"{task})",
    ]
    if event.culprit is not None:
        lines.append(
            f"    allow:    {allow_entry(event.culprit)!r} in loopwatch_allow or "
            f"@pytest.mark.loopwatch(allow=[...])"
        )
    if event.stack:
        lines.append("    stack:")
        lines.extend(f"      {line}" for line in trim_stack(event.stack).splitlines())
    return "\n".join(lines)


def _no_culprit(event: BlockEvent) -> str:
    if event.samples:
        return "none (no application code on the stack: a callback or library code)"
    return f"none (no stack sample could be taken during the stall: cause {event.cause})"


def _skip_modules() -> tuple[str, ...]:
    return resolve_config().skip_modules + TEST_RUNNER_MODULES


def allow_entry(frame: FrameInfo) -> str:
    """The ``module:function`` entry that allows ``frame`` as a culprit."""
    parts = frame.function.split(".")
    fallback = None
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == os.path.realpath(frame.file):
            return f"{'.'.join(parts[:cut])}:{'.'.join(parts[cut:])}"
        fallback = fallback or f"{'.'.join(parts[:cut])}:{'.'.join(parts[cut:])}"
    return fallback or f"{parts[0]}:{'.'.join(parts[1:])}"


_DISPATCH = re.compile(r" in (Handle\.)?_run$")  # no qualified names before Python 3.11


def trim_stack(stack: str) -> str:
    """Drop the frames of pytest and the event loop above the watched test or fixture."""
    lines = stack.splitlines()
    ours = f'File "{__file__}"'
    frames = [index for index, line in enumerate(lines) if line.strip().startswith('File "')]
    cut = next((i for i in reversed(frames) if lines[i].strip().startswith(ours)), None)
    if cut is not None:  # drop our wrapper and its source line
        rest = lines[cut + 1 :]
        if rest and not rest[0].strip().startswith('File "'):
            rest = rest[1:]
    else:  # a callback: keep the loop's dispatch frame that called it
        dispatch = f"{os.sep}asyncio{os.sep}events.py"
        cut = next(
            (i for i in reversed(frames) if dispatch in lines[i] and _DISPATCH.search(lines[i])),
            None,
        )
        rest = lines[cut:] if cut is not None else []
    if not rest:
        return stack
    return "\n".join([lines[0], "  ... (outer frames of pytest and the event loop omitted)", *rest])
