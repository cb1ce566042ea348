"""loopwatch."""
