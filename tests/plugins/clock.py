"""The injectable clock every windowed, SLO and trace test moves by hand."""

from __future__ import annotations


class FakeClock:
    """A clock the test moves by hand; ``t`` and ``now`` are the same reading."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    @property
    def now(self) -> float:
        """The current reading."""
        return self.t

    @now.setter
    def now(self, value: float) -> None:
        self.t = value

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.t += seconds
