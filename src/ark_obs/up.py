"""``ark-obs up``: the orchestrated start, as the seed's start_production.sh did it, in one command.

1. ``ark-obs check-config`` (exit 2 listing every problem, nothing started);
2. ``ark-obs serve`` as a child process (its log on this terminal);
3. wait for ``/readyz`` (exit 1 naming the failing check, or the child's exit, at ``--ready-timeout``);
4. ``ark-obs validate --synthetic --watch DURATION`` (the seed's checklist on the built-in pipeline: proves the
   installed package's safeguards work on this host; the service's own traffic is not touched);
5. a status summary: version, URLs, readiness checks, SLO verdicts, each validation step.

Then it keeps serving until SIGTERM or Ctrl-C (forwarded to the service; exit status the service's). A failed or
inconclusive validation stops the service and exits 1. ``--no-serve`` runs steps 1, 3, 4 and 5 against a service
already started elsewhere (a systemd unit: ``ark-obs-validate.service``) and exits.

Each step is a subprocess of this interpreter (``python -m ark_obs ...``): exactly what an operator would type.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx

from ark_obs.settings import Settings, env_name

__all__ = ["ARGUMENTS", "HELP", "main"]

HELP: Final = (
    "Orchestrated start: check the configuration, start the service, wait for /readyz, run `validate "
    "--synthetic`, print a status summary, keep serving (exit 2 bad configuration, 1 not ready or not valid)."
)

ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--host",), {"help": f"address to bind (overrides {env_name('host')})"}),
    (("--port",), {"type": int, "help": f"port to bind (overrides {env_name('port')})"}),
    (("--env-file",), {"type": Path, "help": "dotenv file to read (default: ./.env if it exists)"}),
    (("--watch",), {"default": "30s", "metavar": "DURATION",
                    "help": "validate: how long every SLO must stay met (default 30s)"}),
    (("--ready-timeout",), {"type": float, "default": 30.0, "metavar": "SECONDS",
                            "help": "how long to wait for /readyz (default 30)"}),
    (("--no-validate",), {"action": "store_true", "help": "skip the synthetic validation"}),
    (("--no-serve",), {"action": "store_true",
                       "help": "check, wait and validate a service started elsewhere (systemd), then exit"}),
)  # fmt: skip

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2
WILDCARD: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def _ark_obs(*args: str) -> list[str]:
    return [sys.executable, "-m", "ark_obs", *args]


def _say(step: int, text: str) -> None:
    print(f"[{step}/5] {text}", flush=True)


def _base_url(args: argparse.Namespace) -> str:
    """Where the service answers (a wildcard bind is reached on loopback)."""
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    env_file = args.env_file or (Path(".env") if Path(".env").is_file() else None)
    settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    host = WILDCARD.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def _check_config(args: argparse.Namespace) -> bool:
    env = dict(os.environ)
    if args.host is not None:
        env[env_name("host")] = args.host
    if args.port is not None:
        env[env_name("port")] = str(args.port)
    extra = ["--env-file", str(args.env_file)] if args.env_file else []
    done = subprocess.run(_ark_obs("check-config", *extra), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        return False
    first = done.stdout.splitlines()[:1]
    for line in [*first, *done.stderr.splitlines()]:
        print(f"      {line}", flush=True)
    return True


def _wait_ready(url: str, child: subprocess.Popen[bytes] | None, timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return False, f"ark-obs serve exited with status {child.returncode}"
            try:
                answer = client.get(f"{url}/readyz")
                if answer.status_code == 200:
                    return True, "ready"
                last = f"{answer.status_code}: failing {', '.join(answer.json().get('failing', [])) or '?'}"
            except (httpx.TransportError, ValueError) as exc:
                last = f"no answer ({type(exc).__name__})"
            time.sleep(0.2)
    return False, f"not ready after {timeout:g} s ({last})"


def _validate(watch: str) -> tuple[int, dict[str, Any] | None, str]:
    done = subprocess.run(
        _ark_obs("validate", "--synthetic", "--watch", watch, "--json"), capture_output=True, text=True
    )
    try:
        report: dict[str, Any] | None = json.loads(done.stdout)
    except ValueError:
        report = None
    return done.returncode, report, done.stderr.strip()


def _summary(url: str, report: dict[str, Any] | None, validated: bool) -> list[str]:
    """The status summary's lines, from the service's own answers."""
    from ark_obs import __version__

    lines = [f"ark-obs {__version__} is up on {url}:"]
    for name, path in (("status page", "/"), ("metrics", "/metrics"), ("SLOs", "/slos"), ("API docs", "/docs")):
        lines.append(f"  {name:<12} {url}{path}")
    with httpx.Client(timeout=5.0) as client:
        try:
            ready = client.get(f"{url}/readyz").json()
            checks = ", ".join(f"{c['name']} {'ok' if c['ok'] else 'FAILING'} ({c['detail']})" for c in ready["checks"])
            lines.append(f"  readiness    {ready['status']}: {checks}")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            lines.append(f"  readiness    unknown ({type(exc).__name__})")
        try:
            slos = client.get(f"{url}/slos").json()["slos"]
            by_status: dict[str, list[str]] = {}
            for slo in slos:
                by_status.setdefault(str(slo.get("status")), []).append(str(slo.get("name")))
            lines.append(
                "  SLOs         " + "; ".join(f"{status}: {', '.join(names)}" for status, names in by_status.items())
            )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            lines.append(f"  SLOs         unknown ({type(exc).__name__})")
    if not validated:
        lines.append("  validation   skipped (--no-validate)")
    elif report is None:
        lines.append("  validation   no report")
    else:
        lines.append(f"  validation   {report['verdict']} ({len(report['steps'])} steps, ark-obs validate --synthetic)")
        lines.extend(f"    {s['verdict']:<12} {s['name']}: {s['observed']}" for s in report["steps"])
    return lines


def _stop(child: subprocess.Popen[bytes] | None) -> None:
    if child is not None and child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def main(args: argparse.Namespace) -> int:
    """The ``up`` subcommand."""
    _say(1, "checking the configuration (ark-obs check-config)")
    if not _check_config(args):
        print("ark-obs up: configuration problems; nothing started", file=sys.stderr)
        return EXIT_BAD_CONFIG
    url = _base_url(args)
    child: subprocess.Popen[bytes] | None = None
    if args.no_serve:
        _say(2, f"not starting the service (--no-serve): expecting it on {url}")
    else:
        serve = ["serve"]
        for flag, value in (("--host", args.host), ("--port", args.port), ("--env-file", args.env_file)):
            if value is not None:
                serve += [flag, str(value)]
        _say(2, f"starting ark-obs serve on {url}")
        child = subprocess.Popen(_ark_obs(*serve))
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _say(3, f"waiting for {url}/readyz (up to {args.ready_timeout:g} s)")
        ready, why = _wait_ready(url, child, args.ready_timeout)
        if not ready:
            print(f"ark-obs up: {why}", file=sys.stderr)
            _stop(child)
            return EXIT_FAILED
        report: dict[str, Any] | None = None
        status = EXIT_OK
        if args.no_validate:
            _say(4, "validation skipped (--no-validate)")
        elif not stopping:
            _say(4, f"ark-obs validate --synthetic --watch {args.watch}")
            status, report, errors = _validate(args.watch)
            if report is None and errors:
                print(errors, file=sys.stderr)
        if stopping:
            return EXIT_OK
        _say(5, "status summary")
        print("\n".join(_summary(url, report, not args.no_validate)), flush=True)
        if status != EXIT_OK or (report is None and not args.no_validate):
            print("ark-obs up: the validation did not pass; stopping the service", file=sys.stderr)
            _stop(child)
            return EXIT_FAILED
        if child is None:
            return EXIT_OK
        print("serving; stop with Ctrl-C or SIGTERM", flush=True)
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(child)
