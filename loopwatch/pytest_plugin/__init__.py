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
(``asyncio.run`` or ``trio.run`` in a test), ``unittest.IsolatedAsyncioTestCase``,
hypothesis async tests. anyio's trio backend is watched like asyncio (on trio the
wrapper sleeps one more round before stopping: trio runs the tasks it wakes together in
a random order). The watchers report to the test only: no spans or metrics reach the
OpenTelemetry providers the tests may use; the core's WARNING log line is kept (captured
with the test).

Costs: the extra ``await asyncio.sleep(0)`` before a watched coroutine lets callbacks that
are already scheduled run first. Each watched coroutine (test, fixture setup, fixture
teardown) starts and joins a watchdog thread, about 1 ms (2 ms on uvloop).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Generator
from typing import Any

import pytest

from .recording import LoopwatchWarning, Plugin, Run
from .report import add_section, allow_entry, fail_on_stalls, trim_stack
from .settings import (
    DEFAULT_THRESHOLD,
    Allow,
    is_threshold,
    parse_threshold,
    policy_for,
    read_settings,
)
from .watching import is_async, watched

__all__ = ["Allow", "LoopwatchWarning", "allow_entry", "parse_threshold", "trim_stack"]

PLUGIN_KEY = pytest.StashKey[Plugin]()


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
        if arg == "--loopwatch" and not is_threshold(args[index + 1]):
            args[index] = "--loopwatch="


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
    plugin = item.config.stash.get(PLUGIN_KEY, None)
    run = plugin.current if plugin is not None else None
    if plugin is None or run is None:
        return (yield)
    run.phase = "setup"
    if run.policy.error:
        pytest.fail(run.policy.error, pytrace=False)
    try:
        return (yield)
    except BaseException:
        add_section(plugin, run, "setup", ("setup",))
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    plugin = item.config.stash.get(PLUGIN_KEY, None)
    run = plugin.current if plugin is not None else None
    if plugin is None or run is None:
        return (yield)
    run.phase = "call"
    with pytest.MonkeyPatch.context() as patch:
        if isinstance(item, pytest.Function) and is_async(item.obj):
            patch.setattr(item, "obj", watched(item.obj, plugin, "the test"))
        try:
            result = yield
        except BaseException:
            add_section(plugin, run, "call", ("setup", "call"))
            raise
    fail_on_stalls(plugin, run, ("setup", "call"))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    plugin = item.config.stash.get(PLUGIN_KEY, None)
    run = plugin.current if plugin is not None else None
    if plugin is None or run is None:
        return (yield)
    run.phase = "teardown"
    try:
        result = yield
    except BaseException:
        add_section(plugin, run, "teardown", ("setup", "call", "teardown"))
        raise
    fail_on_stalls(plugin, run, ("setup", "call", "teardown"))
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    # tryfirst: the outermost wrapper, so pytest-asyncio's and anyio's wrappers see ours.
    plugin = request.config.stash.get(PLUGIN_KEY, None)
    run = plugin.current if plugin is not None else None
    func = fixturedef.func
    if plugin is None or run is None or not is_async(func):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        where = f"fixture {fixturedef.argname!r}"  # async generators add setup/teardown
        where += "" if inspect.isasyncgenfunction(func) else " setup"
        patch.setattr(fixturedef, "func", watched(func, plugin, where))
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
