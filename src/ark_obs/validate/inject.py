"""Injections: what a step does to the deployment before it looks for the expected reaction.

An injection returns variables for the expectation (``${trace_id}``): an HTTP answer's top-level JSON
fields, a command's ``KEY=VALUE`` output lines, or what the built-in pipeline reports. An injection
that cannot be carried out raises ``InjectionFailed``: the step is then inconclusive (nothing was
tested), not failed.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final, Protocol

import httpx

from ark_obs.validate.plan import CommandInject, HttpInject, Injection, SyntheticInject

__all__ = ["InjectionFailed", "Injector", "SyntheticInjector", "inject"]

MAX_OUTPUT_BYTES: Final = 64 * 1024  # a command's output kept for variables and messages
_ASSIGNMENT: Final = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


class InjectionFailed(Exception):
    """An injection could not be carried out; the message says why."""


class SyntheticInjector(Protocol):
    """The built-in pipeline's injections (``ark-obs validate --synthetic``)."""

    async def inject(self, action: SyntheticInject) -> dict[str, str]:
        """Carry out ``action``; variables for the expectation."""
        ...

    def restore(self) -> None:
        """Undo the last injection once its step is over (Kenny healthy, the killed agent back)."""


class Injector:
    """Carries out a step's injection."""

    def __init__(self, client: httpx.AsyncClient, synthetic: SyntheticInjector | None = None) -> None:
        self.client = client
        self.synthetic = synthetic

    async def run(self, injection: Injection) -> dict[str, str]:
        """Inject; the variables it yields."""
        if isinstance(injection, HttpInject):
            return await self._http(injection)
        if isinstance(injection, CommandInject):
            return await self._command(injection)
        if self.synthetic is None:
            raise InjectionFailed(f"synthetic injection {injection.synthetic!r} needs ark-obs validate --synthetic")
        return await self.synthetic.inject(injection)

    def restore(self) -> None:
        """Undo what the built-in pipeline was made to do (HTTP and command injections are the plan's business)."""
        if self.synthetic is not None:
            self.synthetic.restore()

    async def _http(self, injection: HttpInject) -> dict[str, str]:
        r = injection.http
        try:
            response = await self.client.request(
                r.method, r.url, json=r.json_body, headers=r.headers, timeout=r.timeout
            )
        except httpx.HTTPError as exc:
            raise InjectionFailed(f"{r.method} {r.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise InjectionFailed(f"{r.method} {r.url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            return {}
        if not isinstance(body, dict):
            return {}
        return {k: str(v) for k, v in body.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}

    async def _command(self, injection: CommandInject) -> dict[str, str]:
        argv = injection.command
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            raise InjectionFailed(f"{argv[0]}: {exc}") from exc
        try:
            out, _ = await asyncio.wait_for(process.communicate(), injection.timeout)
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise InjectionFailed(f"{argv[0]}: still running after {injection.timeout:g} s (killed)") from exc
        text = out[:MAX_OUTPUT_BYTES].decode(errors="replace")
        if process.returncode != 0:
            tail = text.strip().splitlines()[-1:] or [""]
            raise InjectionFailed(f"{argv[0]} exited {process.returncode}: {tail[0][:200]}")
        return {m.group(1): m.group(2).strip() for line in text.splitlines() if (m := _ASSIGNMENT.match(line.strip()))}


async def inject(injector: Injector, injection: Injection | None) -> dict[str, str]:
    """Carry out ``injection`` if there is one."""
    return {} if injection is None else await injector.run(injection)
