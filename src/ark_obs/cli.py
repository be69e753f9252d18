"""The ``ark-obs`` command: ``serve`` and ``check-config`` (other subcommands plug in with ``@command``).

    ark-obs serve [--host H] [--port P] [--synthetic [--fault F ...]]   run the HTTP service (uvicorn)
    ark-obs check-config [--env-file F] [--offline]   report every bad setting and unreachable store or
                                            Prometheus at once; exit status 2 if any
    ark-obs synthetic [--rate R] [...]      the seed's validation loop, with a report (exit 1 on a failure)
    ark-obs canary-check --prometheus URL   canary vs baseline verdict: exit 0 pass, 1 fail, 2 inconclusive
    ark-obs validate --synthetic | --plan F post-deploy validation: exit 0 pass, 1 a step failed, 2 inconclusive
    ark-obs up [--port P] [--watch 30s]     check-config, serve, wait for /readyz, validate --synthetic, summary

A subcommand is one decorated function: ``@command(name, help, arg(...), ...)`` above
``def run(args) -> int`` registers its parser, its arguments and what it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from pydantic import ValidationError

from ark_obs import __version__, canary, catalog, synthetic, up
from ark_obs._redact import redact_url, scrub
from ark_obs.settings import Problem, Settings, env_name
from ark_obs.validate import command as validate_command

log = logging.getLogger("ark_obs.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2

Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Arg:
    """One ``add_argument`` call, kept as data until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """An argument of a subcommand: the same parameters as ``ArgumentParser.add_argument``."""
    return Arg(flags, options)


@dataclass(frozen=True, slots=True)
class Command:
    """A registered subcommand."""

    name: str
    help: str
    args: tuple[Arg, ...]
    run: Runner


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *args: Arg) -> Callable[[Runner], Runner]:
    """Register ``run`` as subcommand ``name`` with ``args``.

    >>> @command("hello", "Say hello.", arg("--who", default="ARK"))
    ... def hello(args: argparse.Namespace) -> int:
    ...     print("hello", args.who)
    ...     return 0
    """

    def register(run: Runner) -> Runner:
        COMMANDS[name] = Command(name, help, args, run)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The ``ark-obs`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="ark-obs", description="Observability of the ARK pipeline: metrics, SLOs, trace continuity."
    )
    parser.add_argument("--version", action="version", version=f"ark-obs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.options)
        p.set_defaults(run=cmd.run)
    return parser


EXIT_CLOSED_PIPE: Final = 141  # what a shell reports for a command ended by SIGPIPE, as `yes | head` does


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ark-obs`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`ark-obs check-config | head -3`): stop quietly, and keep the
        # interpreter's final flush of stdout from printing a second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    return status


# --- configuration problems -----------------------------------------------------------------------
def _field_problems(exc: ValidationError, name: Callable[[str], str] = env_name) -> list[Problem]:
    """One Problem per field error, named by ``name(field)`` (its environment variable, or the flag used)."""
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        given = redact_url(given) if isinstance(given, str) else given
        shown = "" if field == "ingest_token" else f" (got {given!r})"
        problems.append(Problem(name(field), msg + shown))
    return problems


def canary_problems(env_file: Path | None) -> list[Problem]:
    """Every bad ``ARK_OBS_CANARY_*`` setting: the service builds its canary analysis from them at start."""
    try:
        canary.CanaryConfig(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        return _field_problems(exc, canary.env_name)
    return []


def slo_problems(settings: Settings) -> list[Problem]:
    """Every mistake in the SLO file (syntax, fields, metrics, buckets, windows), one Problem each."""
    if settings.slo_file is None:
        return []
    from ark_obs.metrics import MetricsCollector
    from ark_obs.slo import SloConfigError, SloEngine, load_slo_file

    collector = MetricsCollector(
        retention_seconds=settings.retention_seconds, slice_seconds=settings.slice_seconds, ticker=False
    )
    errors: list[str] = []
    try:
        specs = load_slo_file(settings.slo_file, collector.registry)
        SloEngine(collector, specs, register=False)  # checks windows against the retention
    except SloConfigError as exc:
        errors = [*exc.errors, *_window_errors(settings)]
    where = env_name("slo_file")
    return [Problem(where, f"{settings.slo_file}: {e}") for e in dict.fromkeys(errors)]


def _window_errors(settings: Settings) -> list[str]:
    """Windows longer than the retention, in SLOs that are otherwise valid.

    ``load_slo_file`` stops before the retention check when other SLOs have mistakes; checking each
    SLO on its own finds these too, so one run reports everything.
    """
    import tomllib

    import yaml

    from ark_obs.metrics import MetricsCollector
    from ark_obs.slo import SloConfigError, parse_slos, validate_specs

    assert settings.slo_file is not None
    try:
        text = settings.slo_file.read_text(encoding="utf-8")
        data = tomllib.loads(text) if settings.slo_file.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return []  # load_slo_file has reported it
    items = data.get("slos") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    registry = MetricsCollector(retention_seconds=settings.retention_seconds, ticker=False).registry
    out: list[str] = []
    for i, item in enumerate(items):
        try:
            spec = parse_slos({"slos": [item]}, registry=registry)
        except SloConfigError:
            continue
        for error in validate_specs(spec, registry, settings.retention_seconds):
            out.append(error.replace("slos[0]", f"slos[{i}]", 1))
    return out


def load_settings(
    env_file: Path | None = Path(".env"), flags: dict[str, str] | None = None, **overrides: Any
) -> tuple[Settings | None, list[Problem]]:
    """Settings from the environment, ``env_file`` and ``overrides``, with every problem found, the canary
    analysis' settings included. ``flags`` maps an overridden field to the option that set it (``--port``),
    which then names its problems instead of the environment variable the user did not touch."""
    named = flags or {}

    def name(field: str) -> str:
        return named.get(field) or env_name(field)

    canary_found = canary_problems(env_file)
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        return None, [*_field_problems(exc, name), *canary_found]
    found = [*settings.problems(), *slo_problems(settings), *canary_found]
    by_env = {env_name(field): flag for field, flag in named.items()}
    return settings, [Problem(by_env.get(p.setting, p.setting), p.why) for p in found]


def _env_file(given: Path | None) -> tuple[Path | None, list[Problem]]:
    """The dotenv file to read: ``--env-file`` must exist; the default ./.env is read when it does."""
    if given is None:
        default = Path(".env")
        return (default if default.is_file() else None), []
    if not given.is_file():
        return None, [Problem("--env-file", f"no such file: {str(given)!r}")]
    return given, []


def _report(problems: Sequence[Problem], out: TextIO, heading: str) -> None:
    print(heading, file=out)
    for p in problems:
        print(f"  {p.setting}: {p.why}", file=out)


def _fault(text: str) -> synthetic.Fault:
    try:
        return synthetic.Fault.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- serve ------------------------------------------------------------------------------------------
@command(
    "serve",
    "Run the ark-obs HTTP service.",
    arg("--host", help=f"address to bind (overrides {env_name('host')}; default 127.0.0.1)"),
    arg("--port", type=int, help=f"port to bind (overrides {env_name('port')}; default 9871)"),
    arg("--env-file", type=Path, help="dotenv file to read (default: ./.env if it exists)"),
    arg("--synthetic", action="store_true", help="feed the service with the synthetic loop (1 pass/s)"),
    arg("--fault", type=_fault, action="append", default=[], metavar="FAULT",
        help="with --synthetic, inject a fault of the loop (repeatable): kenny-errors, skip-revision, "
        "silence:AGENT, drop:AGENT"),
    arg("--drop-share", type=float, default=0.1,
        help="with --fault drop:AGENT, the share of passes whose span is lost (default 0.1)"),
)  # fmt: skip
def serve(args: argparse.Namespace) -> int:
    """Validate the configuration, then serve until SIGTERM or Ctrl-C (both exit 0 once drained)."""
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    env_file, missing = _env_file(args.env_file)
    settings, problems = load_settings(env_file, {k: f"--{k}" for k in overrides}, **overrides)
    problems = [*missing, *problems]
    if settings is None or problems:
        _report(problems, sys.stderr, "ark-obs: refusing to start; fix these settings:")
        return EXIT_BAD_CONFIG
    if args.fault and not args.synthetic:
        print("ark-obs: --fault injects into the synthetic loop: add --synthetic", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not 0 <= args.drop_share <= 1:
        print(f"ark-obs: --drop-share {args.drop_share}: must be between 0 and 1", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.synthetic:
        config = synthetic.SyntheticConfig(
            duration_seconds=None,
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
            faults=tuple(dict.fromkeys(args.fault)),
            drop_share=args.drop_share,
        )
        return run_server(settings, background=[synthetic.background_hook(config)])
    return run_server(settings)


async def _make_default(service: Any) -> None:
    """Module-level recording (``metrics.increment_counter``, ...) in this process lands on what is served."""
    from ark_obs import metrics

    metrics.set_collector(service.collector)


async def _guard_event_loop(service: Any) -> None:
    """Resource exhaustion reported by the event loop (EMFILE on accept) is logged once per interval."""
    import asyncio

    from ark_obs.service.connections import quiet_resource_errors

    quiet_resource_errors(asyncio.get_running_loop())


def run_server(settings: Settings, **app_options: Any) -> int:
    """Serve ``create_app(settings, **app_options)`` with uvicorn until SIGTERM or SIGINT.

    ``app_options`` go to ``create_app`` (``collector``, ``background`` hooks such as the synthetic loop).
    """
    import uvicorn

    from ark_obs.service import create_app, freeze_long_lived_objects
    from ark_obs.service.connections import OverCapacity, ShutdownSummary, guarded_protocol

    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ark_obs").setLevel(settings.log_level.upper())
    # a long-running server with a big trace store: keep GC pauses out of the scrapes (see the hook)
    background = [_make_default, freeze_long_lived_objects, *app_options.pop("background", ())]
    background.insert(0, _guard_event_loop)
    app = create_app(settings, background=background, **app_options)
    closed = app.state.service.collector.metric(catalog.ARK_OBS_CONNECTIONS_CLOSED_TOTAL.name)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        server_header=False,
        # connections: see ark_obs.service.connections and the README's "Limits"
        http=guarded_protocol(
            settings.header_timeout_seconds, settings.body_timeout_seconds, lambda why: closed.labels(why).inc()
        ),
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        limit_concurrency=settings.max_connections,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(ShutdownSummary(settings.shutdown_timeout_seconds))
    logging.getLogger("uvicorn.error").addFilter(
        OverCapacity(lambda why: closed.labels(why).inc(), settings.max_connections)
    )
    base = settings.bind_url
    try:
        # bound before the banner: a port in use is reported instead of URLs nobody answers at
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        log.error("ark-obs cannot listen on %s: %s", settings.bind_url, exc.strerror or exc)
        return EXIT_FAILED
    log.info(
        "ark-obs %s on %s: %s/metrics  %s/slos  %s/traces?status=incomplete  %s/readyz  %s/docs "
        "(trace store: %s; writes %s)",
        __version__,
        base,
        base,
        base,
        base,
        base,
        base,
        redact_url(settings.trace_store),
        "need the bearer token" if settings.token else "are open",
    )
    stopped: list[int] = []

    # uvicorn re-raises the stop signal once it has drained; landing here turns that into exit 0.
    def note(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind or start: ours is 1
        log.error("ark-obs could not start on %s (uvicorn exit status %s)", settings.bind_url, exc.code)
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return EXIT_OK if server.started or stopped else EXIT_FAILED


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` as uvicorn binds one (address reuse on); OSError when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP, and
    # with Nagle on, every keep-alive response waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# --- check-config -------------------------------------------------------------------------------------
@command(
    "check-config",
    "Validate the configuration (environment, .env file, SLO file, canary analysis) and probe the trace store "
    "and Prometheus; exit status 2 on any problem.",
    arg("--env-file", type=Path, help="dotenv file to read (default: ./.env if it exists)"),
    arg("--offline", action="store_true", help="do not probe the trace store and Prometheus (settings only)"),
)
def check_config(args: argparse.Namespace) -> int:
    """Print every problem at once (exit 2) or the effective settings (exit 0)."""
    env_file, missing = _env_file(args.env_file)
    settings, problems = load_settings(env_file)
    problems = [*missing, *problems]
    if settings is not None and not problems and not args.offline:
        problems = probe(settings, env_file)
    if settings is None or problems:
        _report(problems, sys.stderr, f"ark-obs: {len(problems)} configuration problem(s):")
        return EXIT_BAD_CONFIG
    for w in settings.warnings():
        print(f"warning: {w}", file=sys.stderr)
    print(f"ark-obs: configuration OK (env file: {env_file or 'none'})")
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "ingest_token":
            value = "(set)" if value is not None else "(unset: writes are open)"
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, str):
            value = redact_url(value)
        print(f"  {env_name(name)}={value if value is not None else ''}")
    analysis = canary.CanaryConfig(_env_file=env_file)  # type: ignore[call-arg]
    for name in canary.CanaryConfig.model_fields:
        shown = getattr(analysis, name)
        print(f"  {canary.env_name(name)}={redact_url(shown) if isinstance(shown, str) else shown}")
    return EXIT_OK


PROBE_TIMEOUT_SECONDS: Final = 2.0


def probe(settings: Settings, env_file: Path | None, timeout: float = PROBE_TIMEOUT_SECONDS) -> list[Problem]:
    """What the configured servers say: the trace store answers PING, each Prometheus an instant query.

    Only what is configured is probed: a Redis or Redis Cluster trace store, ``ARK_OBS_PROMETHEUS_URL``, and
    the canary's Prometheus when it is set (its default, 127.0.0.1:9090, is not probed). Each probe gives up
    after ``timeout`` seconds.
    """
    import httpx
    import redis

    out: list[Problem] = []
    store = settings.trace_store
    if store != "memory":
        try:
            if "+cluster://" in store:
                from redis.cluster import ClusterNode, RedisCluster

                from ark_obs.traces.redis_cluster import parse_cluster_url

                nodes, options, _ = parse_cluster_url(store)
                client: Any = RedisCluster(
                    startup_nodes=[ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
                    socket_connect_timeout=timeout, socket_timeout=timeout, **options,
                )  # fmt: skip
            else:
                client = redis.Redis.from_url(store, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # every way a client fails is the store being unreachable here
            why = scrub(f"{type(exc).__name__}: {exc}", store)
            out.append(Problem(env_name("trace_store"), f"{redact_url(store)} does not answer PING: {why}"))
    explicit_canary = os.environ.get(canary.env_name("prometheus_url")) or (
        env_file is not None and canary.env_name("prometheus_url") in env_file.read_text(errors="replace")
    )
    urls = {env_name("prometheus_url"): settings.prometheus_url}
    if explicit_canary:
        urls[canary.env_name("prometheus_url")] = canary.CanaryConfig(_env_file=env_file).prometheus_url  # type: ignore[call-arg]
    for variable, url in urls.items():
        if not url:
            continue
        try:
            answer = httpx.get(f"{url}/api/v1/query", params={"query": "1"}, timeout=timeout)
            if answer.status_code != 200 or answer.json().get("status") != "success":
                raise ValueError(f"HTTP {answer.status_code}, not a Prometheus query answer")
        except (httpx.HTTPError, ValueError) as exc:
            why = scrub(f"{type(exc).__name__}: {exc}", url)
            out.append(Problem(variable, f"Prometheus {redact_url(url)} does not answer: {why}"))
    return out


# --- synthetic and canary-check: their modules own their arguments ----------------------------------------
command("synthetic", synthetic.HELP, *(arg(*flags, **options) for flags, options in synthetic.ARGUMENTS))(
    synthetic.main
)
command("canary-check", canary.HELP, *(arg(*flags, **options) for flags, options in canary.ARGUMENTS))(canary.main)
command("validate", validate_command.HELP, *(arg(*f, **o) for f, o in validate_command.ARGUMENTS))(
    validate_command.main
)

command("up", up.HELP, *(arg(*f, **o) for f, o in up.ARGUMENTS))(up.main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
