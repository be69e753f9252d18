"""Background work: a daemon thread that calls one method of an owner periodically.

The thread holds its owner weakly, so a monitor or store that is dropped stops its thread; ``stop()``
ends it at once. ``wake()`` runs the method early (a store whose write buffer filled up).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

log = logging.getLogger("ark_obs")


class Periodic:
    """Call ``getattr(owner, method)()`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, owner: Any, method: str, interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._ref = weakref.ref(owner)
        self._method = method
        self._stopped = False
        self._wake = threading.Event()
        self._logged = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                return
            owner = self._ref()
            if owner is None:
                return
            try:
                getattr(owner, self._method)()
            except Exception:  # a failing pass must not end the loop; the next one may succeed
                if not self._logged:
                    self._logged = True
                    log.exception("ark-obs background %s failed (logged once)", self._thread.name)
            del owner

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float | None = 2.0) -> None:
        """End the thread (waits for a running pass, up to ``timeout``)."""
        self._stopped = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()
