"""The pytest plugin (``loopwatch.pytest_plugin``), driven through ``pytester``.

Each test writes a small test suite and runs it in-process with pytest-asyncio and anyio
loaded from their entry points, as a user's suite would. Against the default threshold of
0.1 s, stalls that only have to fail a test are 0.3 s; stalls whose culprit is checked (or
allowed) are 0.5 s: the watchdog samples at 0.1, 0.2 and 0.4 s, so one sample is on time
even when a busy machine delays another. A passing run must not report anything.
"""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

import loopwatch.pytest_plugin as plugin
from loopwatch import DEFAULT_SKIP_MODULES
from loopwatch.events import FrameInfo
from loopwatch.pytest_plugin import Allow, allow_entry, parse_threshold, trim_stack

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

HEADER = """
import asyncio
import threading
import time

import pytest
import pytest_asyncio

import loopwatch


def spin(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def watchdogs():  # started since this module was imported (the run is in-process)
    return [
        t for t in threading.enumerate() if t.name == "loopwatch-watchdog" and t not in BEFORE
    ]


BEFORE = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
"""


@pytest.fixture(autouse=True)
def _outer_frames_are_not_culprits(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs have this file's frames below pytest's: never name them culprits."""
    skip = (*DEFAULT_SKIP_MODULES, __name__)
    monkeypatch.setenv("LOOPWATCH_SKIP_MODULES", ",".join(skip))


def suite(pytester: pytest.Pytester, body: str, *, ini: str = "", name: str = "") -> None:
    pytester.makefile(".ini", pytest=INI + textwrap.dedent(ini))
    source = HEADER + textwrap.dedent(body)
    if name:
        pytester.makepyfile(**{name: source})
    else:
        pytester.makepyfile(source)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-ra", *args)


def failure_of(result: pytest.RunResult, test: str) -> str:
    """The text of one test's failure (or error) section."""
    text = result.stdout.str()
    title = rf"_{{3,}} (?:ERROR at \w+ of )?{re.escape(test)} _{{3,}}\n"
    end = r"(?=\n_{3,} |\n={3,} |\n-{3,} loopwatch)"
    match = re.search(title + "(.*?)" + end, text, re.S)
    assert match, f"no failure section for {test} in:\n{text}"
    return match.group(1)


def assert_quiet(result: pytest.RunResult) -> None:
    """Nothing from loopwatch in the output but the plugin's name in the header."""
    out = result.stdout.str()
    for text in ("event loop blocked", "ran on a watched event loop", "loopwatch: threshold"):
        assert text not in out


# --- the plugin is off unless asked for -------------------------------------------------


def test_off_by_default_a_stalling_test_passes(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_sleeps():
            assert watchdogs() == []
            time.sleep(0.3)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert_quiet(result)


# --- failing and passing tests ----------------------------------------------------------


def test_blocking_call_fails_with_culprit_offender_duration_and_stack(
    pytester: pytest.Pytester,
) -> None:
    suite(
        pytester,
        """
        def read_config():
            time.sleep(0.5)  # the blocking line

        @pytest.mark.asyncio
        async def test_reads_config():
            await asyncio.sleep(0)
            read_config()
        """,
        name="test_blocking",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=1)
    text = failure_of(result, "test_reads_config")
    path = str(pytester.path / "test_blocking.py")
    source_lines = (pytester.path / "test_blocking.py").read_text().splitlines()
    blocking = next(n for n, src in enumerate(source_lines, 1) if "the blocking line" in src)
    caller = next(n for n, src in enumerate(source_lines, 1) if src.strip() == "read_config()")
    headline = r"loopwatch: event loop blocked for 0\.[2-9]\d* s in the test \(threshold 0\.1 s\)"
    assert re.search(headline, text)
    assert f"culprit:  test_blocking.read_config ({path}:{blocking})" in text
    assert f"offender: test_blocking.read_config ({path}:{blocking})" in text
    assert "cause:    blocking" in text
    assert "'test_blocking:read_config'" in text  # the allow entry to copy
    # the stack: from the test down, without pytest's and the loop's frames
    assert f'File "{path}", line {caller}, in test_reads_config' in text
    assert f'File "{path}", line {blocking}, in read_config' in text
    assert "time.sleep(0.5)  # the blocking line" in text
    assert "_pytest" not in text
    assert "pluggy" not in text
    assert "its end was not seen" not in text  # a stall in the last step is measured whole
    duration = re.search(r"duration: (\d+\.\d+) s", text)
    assert duration
    assert 0.4 <= float(duration.group(1)) < 1.0
    result.stdout.fnmatch_lines(["FAILED test_blocking.py::test_reads_config - Failed: loopwatch*"])


def test_awaiting_tests_pass_and_the_loop_is_watched(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_awaits():
            assert len(watchdogs()) == 1  # the loop of this test is watched
            await asyncio.sleep(0.3)
            for _ in range(20):
                await asyncio.sleep(0.01)
            time.sleep(0.03)  # below the threshold

        def test_sync_has_no_watcher():
            assert watchdogs() == []
            time.sleep(0.3)  # no event loop: not a stall
        """,
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 of 2 tests ran on a watched event loop*0 failed by a stall*"])
    assert "event loop blocked" not in result.stdout.str()


def test_asyncio_auto_mode_and_plain_fixtures(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.fixture
        async def plain_async_fixture():
            time.sleep(0.3)
            yield

        async def test_unmarked_blocks():
            time.sleep(0.3)

        async def test_fixture_blocks(plain_async_fixture):
            pass

        async def test_unmarked_awaits():
            await asyncio.sleep(0.3)
        """,
        ini="asyncio_mode = auto",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=1)
    assert "in fixture 'plain_async_fixture' setup" in failure_of(result, "test_fixture_blocks")


def test_cpu_bound_stall_is_caught(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_crunches():
            spin(0.5)
        """,
        name="test_cpu",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=1)
    text = failure_of(result, "test_crunches")
    assert "culprit:  test_cpu.spin (" in text
    assert "cause:    cpu" in text


def test_stall_in_a_callback_is_caught_without_a_culprit(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_schedules_blocking_callback():
            asyncio.get_running_loop().call_soon(time.sleep, 0.3)
        """,
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=1)
    text = failure_of(result, "test_schedules_blocking_callback")
    assert "culprit:  none (no application code on the stack" in text
    assert "its end was not seen" not in text
    assert re.search(r"offender: asyncio\.events\.(Handle\.)?_run \(", text)


def test_a_failing_test_also_shows_its_stall(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_fails_after_stalling():
            time.sleep(0.3)
            assert 1 == 2
        """,
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*assert 1 == 2*", "*Captured loopwatch call*", "loopwatch: event loop blocked for*"]
    )


def test_suppressed_stall_does_not_fail(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_deliberate():
            with loopwatch.suppress():
                time.sleep(0.3)
        """,
    )
    run(pytester, "--loopwatch").assert_outcomes(passed=1)


# --- fixtures ---------------------------------------------------------------------------


def test_stalls_in_async_fixtures_count_for_the_test_using_them(
    pytester: pytest.Pytester,
) -> None:
    suite(
        pytester,
        """
        @pytest_asyncio.fixture
        async def slow_resource():
            time.sleep(0.5)
            return 1

        @pytest_asyncio.fixture
        async def slow_teardown():
            yield 2
            time.sleep(0.5)

        @pytest.mark.asyncio
        async def test_uses_slow_resource(slow_resource):
            await asyncio.sleep(0)

        def test_sync_uses_slow_resource(slow_resource):
            pass

        @pytest.mark.asyncio
        async def test_uses_slow_teardown(slow_teardown):
            await asyncio.sleep(0)

        class TestInAClass:
            @pytest_asyncio.fixture
            async def bound(self):
                self.marker = "set by the fixture"
                return 3

            @pytest.mark.asyncio
            async def test_method_fixture_keeps_self(self, bound):
                assert self.marker == "set by the fixture" and bound == 3
        """,
        name="test_fixtures",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=2, errors=1)
    for test in ("test_uses_slow_resource", "test_sync_uses_slow_resource"):
        text = failure_of(result, test)
        assert "event loop blocked for" in text
        assert "in fixture 'slow_resource' setup" in text
        assert "culprit:  test_fixtures.slow_resource (" in text
    text = failure_of(result, "test_uses_slow_teardown")
    assert "in fixture 'slow_teardown' teardown" in text
    result.stdout.fnmatch_lines(
        [
            "ERROR test_fixtures.py::test_uses_slow_teardown - Failed: loopwatch:*",
            "FAILED test_fixtures.py::test_uses_slow_resource - Failed: loopwatch:*",
        ],
        consecutive=False,
    )


def test_a_stopped_loop_is_not_a_stall(pytester: pytest.Pytester) -> None:
    """The loop is idle between fixtures and the test: time spent then must not count."""
    suite(
        pytester,
        """
        @pytest.fixture
        def slow_sync_fixture():
            time.sleep(0.3)  # the loop exists but does not run: not a stall

        @pytest_asyncio.fixture(loop_scope="module")
        async def shared():
            await asyncio.sleep(0)
            return 1

        @pytest.mark.asyncio(loop_scope="module")
        async def test_first(shared):
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio(loop_scope="module")
        async def test_second(shared, slow_sync_fixture):
            await asyncio.sleep(0.01)
        """,
    )
    run(pytester, "--loopwatch").assert_outcomes(passed=2)


# --- configuration ----------------------------------------------------------------------


def test_marker_enables_and_overrides_the_threshold(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        @pytest.mark.loopwatch(threshold=0.05)
        async def test_strict():
            time.sleep(0.2)

        @pytest.mark.asyncio
        @pytest.mark.loopwatch(threshold=0.6)
        async def test_lenient():
            time.sleep(0.2)

        @pytest.mark.asyncio
        @pytest.mark.loopwatch(enabled=False)
        async def test_opted_out():
            time.sleep(0.3)

        @pytest.mark.asyncio
        async def test_unmarked():
            time.sleep(0.3)
        """,
    )
    # Without --loopwatch only the marked tests are watched.
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=3)
    assert "(threshold 0.05 s)" in failure_of(result, "test_strict")
    # With it, the marker's threshold and enabled=False still win.
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(["FAILED *::test_strict *", "FAILED *::test_unmarked *"])


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (("--loopwatch=0.4",), ""),
        (("--loopwatch=400ms",), ""),
        (("--loopwatch",), "loopwatch_threshold = 0.4"),
        ((), "loopwatch = true\nloopwatch_threshold = 400ms"),
    ],
    ids=["option", "option-ms", "ini-threshold", "ini-only"],
)
def test_threshold_from_option_and_ini(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str
) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_below():
            time.sleep(0.2)

        @pytest.mark.asyncio
        async def test_above():
            time.sleep(0.8)
        """,
        ini=ini,
    )
    result = run(pytester, *args)
    result.assert_outcomes(failed=1, passed=1)
    assert "(threshold 0.4 s)" in failure_of(result, "test_above")
    result.stdout.fnmatch_lines(["loopwatch: threshold 0.4 s*"])


@pytest.mark.parametrize(("path", "passed"), [("test_path.py", 0), (".", 1)])
def test_bare_option_before_a_path_keeps_the_path(
    pytester: pytest.Pytester, path: str, passed: int
) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_one():
            time.sleep(0.3)
        """,
        name="test_path",
    )
    pytester.makepyfile(test_other="def test_other(): pass")
    result = run(pytester, "--loopwatch", path)
    result.assert_outcomes(failed=1, passed=passed)


def test_off_wins_over_ini_and_markers(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        @pytest.mark.loopwatch(threshold=0.05)
        async def test_marked():
            time.sleep(0.2)
        """,
        ini="loopwatch = true",
    )
    result = run(pytester, "--loopwatch=off")
    result.assert_outcomes(passed=1)
    assert_quiet(result)


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (("--loopwatch=soon",), "", "--loopwatch='soon' is not a duration"),
        (("--loopwatch=0",), "", "out of range"),
        (("--loopwatch", "0"), "", "out of range"),
        ((), "loopwatch_threshold = fast", "loopwatch_threshold='fast' is not a duration"),
        ((), "loopwatch_allow = no_colon_here", "is not module:function"),
    ],
)
def test_bad_settings_are_usage_errors(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str, message: str
) -> None:
    suite(pytester, "def test_nothing(): pass", ini=ini)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_bad_marker_fails_the_test_setup(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        @pytest.mark.loopwatch(treshold=0.05)
        async def test_typo():
            pass
        """,
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.loopwatch takes threshold*"])


# --- the allow-list ---------------------------------------------------------------------


ALLOW_SUITE = """
import legacy

@pytest.mark.asyncio
async def test_ini_allows_legacy():
    legacy.load_all()

@pytest.mark.asyncio
async def test_ini_allows_class_methods():
    legacy.Cache().warm()

@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=["test_allow:test_marker_allows_itself"])
async def test_marker_allows_itself():
    time.sleep(0.5)

@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=["test_allow:*_wildcard"])
async def test_marker_wildcard():
    time.sleep(0.5)

@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=["legacy:load_all"])
async def test_other_culprit_still_fails():
    legacy.save_all()
"""

LEGACY = """
import time

def load_all():
    time.sleep(0.5)

def save_all():
    time.sleep(0.5)

class Cache:
    def warm(self):
        time.sleep(0.5)
"""


# Before Python 3.11 code objects have no qualified name: the culprit is "legacy.warm".
CACHE_ENTRY = "legacy:Cache" if sys.version_info >= (3, 11) else "legacy:warm"


def test_allow_list_in_ini_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(legacy=LEGACY)
    suite(
        pytester,
        ALLOW_SUITE,
        ini=f"""
        loopwatch_allow =
            legacy:load_all
            {CACHE_ENTRY}
        """,
        name="test_allow",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=1, passed=4)
    text = failure_of(result, "test_other_culprit_still_fails")
    assert "culprit:  legacy.save_all (" in text
    result.stdout.fnmatch_lines(
        ["*5 of 5 tests ran on a watched event loop*1 failed by a stall, 4 stalls allowed*"]
    )
    # Only the marker entry that did not match its own test's stall is unused.
    warned = re.findall(r"LoopwatchWarning: .*", result.stdout.str())
    assert len(warned) == 1
    assert "'legacy:load_all' (marker on test_allow.py::test_other_culprit" in warned[0]


def test_unused_allow_entries_warn_at_the_end(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        @pytest.mark.loopwatch(allow=["test_unused:test_fast", "gone:helper"])
        async def test_fast():
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        @pytest.mark.loopwatch(allow=["test_unused:test_slow"])
        async def test_slow():
            time.sleep(0.5)
        """,
        ini="""
        loopwatch_allow =
            old_module:removed_function
        """,
        name="test_unused",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "entry 'test_unused:test_slow'" not in out  # it matched
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "pytest.ini:*",
            "*LoopwatchWarning: loopwatch allow-list entry 'old_module:removed_function' "
            "(ini loopwatch_allow) never matched a stall in this run; remove it if it is stale",
        ]
    )
    for entry in ("test_unused:test_fast", "gone:helper"):
        assert (
            f"LoopwatchWarning: loopwatch allow-list entry '{entry}' "
            f"(marker on test_unused.py::test_fast) never matched a stall" in out
        )
    # -W error turns the warning into a failed run
    result = run(pytester, "--loopwatch", "-W", "error::loopwatch.pytest_plugin.LoopwatchWarning")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ERROR: loopwatch allow-list entry 'old_module:removed_*"])


@pytest.mark.parametrize("args", [(), ("--loopwatch",)], ids=["off", "sync-tests-only"])
def test_allow_entries_do_not_warn_when_no_loop_was_watched(
    pytester: pytest.Pytester, args: tuple[str, ...]
) -> None:
    suite(
        pytester,
        """
        @pytest.mark.loopwatch(allow=["old:marker_entry"])
        def test_sync():
            pass
        """,
        ini="loopwatch_allow = old:ini_entry",
    )
    result = run(pytester, *args)
    result.assert_outcomes(passed=1)
    assert "LoopwatchWarning" not in result.stdout.str()


# --- anyio and uvloop -------------------------------------------------------------------


def test_anyio_asyncio_backend(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """
        import anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.fixture
        async def slow_anyio_fixture():
            time.sleep(0.5)
            yield 1

        @pytest.mark.anyio
        async def test_blocks():
            time.sleep(0.5)

        @pytest.mark.anyio
        async def test_fixture_blocks(slow_anyio_fixture):
            await anyio.sleep(0)

        @pytest.mark.anyio
        async def test_awaits():
            assert len(watchdogs()) == 1
            await anyio.sleep(0.3)
        """,
        name="test_anyio_suite",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=1)
    assert "culprit:  test_anyio_suite.test_blocks (" in failure_of(result, "test_blocks")
    text = failure_of(result, "test_fixture_blocks")
    assert "in fixture 'slow_anyio_fixture' setup" in text


def test_anyio_trio_backend(pytester: pytest.Pytester) -> None:
    """anyio's trio backend: a blocking test and fixture fail with their culprit, a test
    that awaits passes under its own watcher, suppress() works."""
    suite(
        pytester,
        """
        import anyio

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.fixture
        async def slow_trio_fixture():
            time.sleep(0.5)
            yield 1

        @pytest.mark.anyio
        async def test_blocks():
            time.sleep(0.5)

        @pytest.mark.anyio
        async def test_fixture_blocks(slow_trio_fixture):
            await anyio.sleep(0)

        @pytest.mark.anyio
        async def test_awaits():
            assert len(watchdogs()) == 1
            await anyio.sleep(0.3)

        @pytest.mark.anyio
        async def test_deliberate():
            with loopwatch.suppress():
                time.sleep(0.3)
        """,
        name="test_trio_suite",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=2)
    text = failure_of(result, "test_blocks")
    assert "culprit:  test_trio_suite.test_blocks (" in text
    assert "unrolled_run" not in text  # trio's frames are trimmed like the loop's
    text = failure_of(result, "test_fixture_blocks")
    assert "in fixture 'slow_trio_fixture' setup" in text


UVLOOP_CONFTESTS = {
    "loop-factories-hook": """
        import uvloop

        def pytest_asyncio_loop_factories(config, item):
            return {"uvloop": uvloop.new_event_loop}
        """,
    "event-loop-policy-fixture": """
        import pytest
        import uvloop

        @pytest.fixture(scope="session")
        def event_loop_policy():  # deprecated in pytest-asyncio 1.x, still common
            return uvloop.EventLoopPolicy()
        """,
}


@pytest.mark.parametrize("conftest", UVLOOP_CONFTESTS.values(), ids=UVLOOP_CONFTESTS.keys())
def test_uvloop_with_pytest_asyncio_and_anyio(pytester: pytest.Pytester, conftest: str) -> None:
    pytest.importorskip("uvloop")
    pytester.makeconftest(conftest)
    suite(
        pytester,
        """
        import uvloop

        @pytest.fixture
        def anyio_backend():
            return ("asyncio", {"use_uvloop": True})

        @pytest.mark.asyncio
        async def test_pytest_asyncio_blocks():
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            time.sleep(0.5)

        @pytest.mark.anyio
        async def test_anyio_blocks():
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            time.sleep(0.5)

        @pytest.mark.asyncio
        async def test_pytest_asyncio_awaits():
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            await asyncio.sleep(0.3)
        """,
        name="test_uv",
    )
    result = run(pytester, "--loopwatch")
    result.assert_outcomes(failed=2, passed=1)
    assert "culprit:  test_uv.test_pytest_asyncio_blocks (" in failure_of(
        result, "test_pytest_asyncio_blocks"
    )
    assert "culprit:  test_uv.test_anyio_blocks (" in failure_of(result, "test_anyio_blocks")
    assert "its end was not seen" not in result.stdout.str()


# --- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "function", "expected"),
    [
        ("app.db:connect", "app.db.connect", True),
        ("app.db:connect", "app.db.connect.<locals>.retry", True),
        ("app.db:Pool", "app.db.Pool.acquire", True),
        ("app.db:conn*", "app.db.connection_factory", True),
        ("app:db.connect", "app.db.connect", True),
        ("app.db:connect", "app.db.connector", False),
        ("app.db:connect", "other.app.db.connect", False),
        ("app.db:connect", "app.db", False),
    ],
)
def test_allow_entry_matching(entry: str, function: str, expected: bool) -> None:
    assert Allow.parse(entry, "test").matches(function) is expected


@pytest.mark.parametrize("entry", ["no_colon", ":func", "mod:", "a:b:c"])
def test_allow_entry_must_be_module_colon_function(entry: str) -> None:
    with pytest.raises(ValueError, match="is not module:function"):
        Allow.parse(entry, "test")


def test_threshold_parsing() -> None:
    assert parse_threshold("0.05", "x") == 0.05
    assert parse_threshold("50ms", "x") == pytest.approx(0.05)
    assert parse_threshold(" 2s ", "x") == 2.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_threshold("abc", "x")
    with pytest.raises(ValueError, match="out of range"):
        parse_threshold("0.0001", "x")


def test_allow_entry_suggestion_splits_module_from_qualname() -> None:
    frame = FrameInfo("loopwatch.pytest_plugin.Allow.parse", plugin.__file__, 1)
    assert allow_entry(frame) == "loopwatch.pytest_plugin:Allow.parse"
    assert allow_entry(FrameInfo("not_imported.func", "/nowhere.py", 1)) == "not_imported:func"


def test_trim_stack_keeps_frames_below_the_wrapper() -> None:
    stack = "\n".join(
        [
            "Traceback (most recent call last):",
            '  File "/site-packages/_pytest/runner.py", line 1, in call',
            "    item.runtest()",
            f'  File "{plugin.__file__}", line 2, in loopwatch_watched',
            "    return await func(*args, **kwargs)",
            '  File "/app/test_x.py", line 3, in test_x',
            "    time.sleep(1)",
        ]
    )
    assert trim_stack(stack).splitlines() == [
        "Traceback (most recent call last):",
        "  ... (outer frames of pytest and the event loop omitted)",
        '  File "/app/test_x.py", line 3, in test_x',
        "    time.sleep(1)",
    ]
    unrelated = 'Traceback (most recent call last):\n  File "/a.py", line 1, in f'
    assert trim_stack(unrelated) == unrelated


def test_xdist_workers_report_to_the_controller(pytester: pytest.Pytester) -> None:
    """Allow entries used on one worker are not unused on another; counts add up."""
    pytest.importorskip("xdist")
    suite(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_first():
            time.sleep(0.5)

        @pytest.mark.asyncio
        async def test_second():
            time.sleep(0.5)

        @pytest.mark.asyncio
        async def test_third():
            await asyncio.sleep(0)
        """,
        ini="""
        loopwatch_allow =
            test_xdist:test_first
            test_xdist:test_second
            test_xdist:never
        """,
        name="test_xdist",
    )
    result = run(pytester, "--loopwatch", "-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*3 of 3 tests ran on a watched event loop*0 failed by a stall, 2 stalls allowed*"]
    )
    warned = re.findall(r"LoopwatchWarning: .*", result.stdout.str())
    assert len(warned) == 1
    assert "'test_xdist:never'" in warned[0]


def test_nothing_goes_to_the_tests_own_telemetry(pytester: pytest.Pytester) -> None:
    """The plugin's watchers emit no spans or metrics into providers the tests set up."""
    pytester.makeconftest(
        """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        READER = InMemoryMetricReader()
        EXPORTER = InMemorySpanExporter()
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
        """
    )
    suite(
        pytester,
        """
        from conftest import EXPORTER, READER

        @pytest.mark.asyncio
        @pytest.mark.loopwatch(allow=["test_otel:test_allowed_stall"])
        async def test_allowed_stall():
            time.sleep(0.5)

        def test_the_app_providers_saw_nothing():
            assert EXPORTER.get_finished_spans() == ()
            data = READER.get_metrics_data()
            names = [
                metric.name
                for resource in (data.resource_metrics if data else [])
                for scope in resource.scope_metrics
                for metric in scope.metrics
            ]
            assert names == []
        """,
        name="test_otel",
    )
    # In a subprocess: the global providers are set once per process.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--loopwatch")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 stalls allowed*"])
