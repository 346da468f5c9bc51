"""The environment switch: which environment new connections go to, and who changed it.

Pure: no I/O, no clock. The shell feeds it requests from every source (start-up
flag, the watched env file, a reloaded config, ``PUT /env``) and acts on the
``SwitchResult`` it returns: log it, count it, drain the old environment. Keeping
the decision here means every source obeys the same rule: an unknown name is
refused and the current environment stays, so a typo in a ConfigMap can never
leave the pod routing nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["EnvSwitch", "SwitchOutcome", "SwitchResult"]

SwitchOutcome = Literal["switched", "unchanged", "refused"]


@dataclass(frozen=True)
class SwitchResult:
    """What a switch request did; ``result`` is the metric label, ``reason`` the log text."""

    result: SwitchOutcome
    requested: str
    source: str
    previous: str | None
    current: str | None
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.result == "switched"

    @property
    def refused(self) -> bool:
        return self.result == "refused"


class EnvSwitch:
    """The one current environment of the pod, among a known set of choices."""

    def __init__(self, environments: Iterable[str], current: str | None = None) -> None:
        self._environments = tuple(dict.fromkeys(environments))
        if current is not None and current not in self._environments:
            raise ValueError(f"unknown environment {current!r}")
        self._current = current
        self._generation = 0

    @property
    def environments(self) -> tuple[str, ...]:
        return self._environments

    @property
    def current(self) -> str | None:
        return self._current

    @property
    def generation(self) -> int:
        """Bumped on every change, so a waiter can tell "changed since I looked"."""
        return self._generation

    def set(self, name: str, source: str) -> SwitchResult:
        """Make ``name`` current; refused (current unchanged) when it is not a known choice."""
        requested = name.strip()
        previous = self._current
        if not requested:
            return SwitchResult(
                "refused", requested, source, previous, previous, "empty environment name"
            )
        if requested not in self._environments:
            choices = ", ".join(self._environments) or "none configured"
            return SwitchResult(
                "refused",
                requested,
                source,
                previous,
                previous,
                f"unknown environment {requested!r} (choices: {choices})",
            )
        if requested == previous:
            return SwitchResult("unchanged", requested, source, previous, previous)
        self._current = requested
        self._generation += 1
        return SwitchResult("switched", requested, source, previous, requested)

    def set_environments(self, environments: Iterable[str]) -> None:
        """Replace the choices (a reloaded config).

        The current environment stays even if the new config lost it: the
        listeners then refuse clients (and say so) rather than silently send
        them somewhere the operator did not pick.
        """
        self._environments = tuple(dict.fromkeys(environments))

    def snapshot(self) -> dict[str, object]:
        """The GET /env body."""
        return {
            "env": self._current,
            "environments": list(self._environments),
            "generation": self._generation,
        }
