"""What flows through the pipeline (signal, pattern, action, verdict, execution) and the Graveyard rules HRM applies.

Frozen data every agent and the loop share, so a pass hands one agent's output to the next as a value;
the rules are immutable, which is what lets HRM detect drift by hashing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

__all__ = ["GRAVEYARD", "SYMBOLS", "Action", "Execution", "GraveyardRule", "Pattern", "Signal", "Verdict", "violating"]


@dataclass(frozen=True, slots=True)
class Signal:
    """A market signal as Kyle ingests it; ``lost_span`` names an agent whose span will be lost."""

    seq: int
    symbol: str
    price: float
    lost_span: str | None = None


@dataclass(frozen=True, slots=True)
class Pattern:
    """Joey's reading of a signal."""

    signal: Signal
    direction: Literal["buy", "sell"]
    confidence: float


@dataclass(frozen=True, slots=True)
class Action:
    """What an agent proposes to do; ``injected`` names the Graveyard rule it was built to break."""

    signal: Signal
    agent: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    leverage: float
    injected: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """HRM's decision on an action."""

    action: Action
    approved: bool
    violations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Execution:
    """Kenny's outcome: executed, skipped (denied or quarantined), or failed."""

    verdict: Verdict
    status: Literal["executed", "denied", "quarantined", "failed"]


# --- the Graveyard: immutable rules HRM checks every action against ------------------------------------
@dataclass(frozen=True, slots=True)
class GraveyardRule:
    """One immutable rule; ``limit`` is a maximum for numeric rules, a forbidden set for symbols."""

    rule_id: str
    description: str
    limit: float | frozenset[str]

    def violated_by(self, action: Action) -> bool:
        """Whether ``action`` breaks this rule."""
        if self.rule_id == "max_position_size":
            return action.quantity > float(self.limit)  # type: ignore[arg-type]
        if self.rule_id == "max_leverage":
            return action.leverage > float(self.limit)  # type: ignore[arg-type]
        if self.rule_id == "restricted_symbol":
            return action.symbol in self.limit  # type: ignore[operator]
        raise ValueError(f"unknown Graveyard rule {self.rule_id!r}")


GRAVEYARD: Final[tuple[GraveyardRule, ...]] = (
    GraveyardRule("max_position_size", "No order above 1,000 units.", 1000.0),
    GraveyardRule("max_leverage", "No leverage above 3x.", 3.0),
    GraveyardRule("restricted_symbol", "No trading in sanctioned symbols.", frozenset({"SANCTIONED"})),
)
SYMBOLS: Final = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")


def violating(action: Action, rule: GraveyardRule) -> Action:
    """``action`` changed to break exactly ``rule`` (a known-bad action)."""
    if rule.rule_id == "max_position_size":
        return replace(action, quantity=5_000, injected=rule.rule_id)
    if rule.rule_id == "max_leverage":
        return replace(action, leverage=10.0, injected=rule.rule_id)
    return replace(action, symbol="SANCTIONED", injected=rule.rule_id)
