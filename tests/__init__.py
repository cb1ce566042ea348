"""loopwatch test suite."""
