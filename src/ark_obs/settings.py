"""Service settings: ``ARK_OBS_*`` environment variables and a ``.env`` file, validated all at once.

>>> Settings(port=9871).bind_url
'http://127.0.0.1:9871'

Field validation reports every bad value in one ``ValidationError``; ``Settings.problems()`` adds the
checks that need several fields (open ingest on a public address). ``ark-obs check-config`` prints both,
plus the SLO file's errors.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ark_obs._redact import redact_url

ENV_PREFIX: Final = "ARK_OBS_"
DEFAULT_HOST: Final = "127.0.0.1"
# 9871 collides with none of Prometheus (9090), Alertmanager (9093), Grafana (3000) or node_exporter
# (9100); the seed's 9090 would make its own scrape config scrape Prometheus itself.
DEFAULT_PORT: Final = 9871
DEFAULT_PIPELINE: Final = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
DEFAULT_KNOWN_AGENTS: Final = ("Watchdog",)
MIB: Final = 1024 * 1024
MIN_TOKEN_LENGTH: Final = 16
# Ports of the neighbouring services: binding there works, but a scrape config would point at the wrong thing.
WELL_KNOWN_PORTS: Final = {9090: "Prometheus", 9093: "Alertmanager", 3000: "Grafana", 9100: "node_exporter"}

# Every endpoint that needs the bearer token; tests/test_limits.py checks it against the app's routes.
WRITE_ENDPOINTS: Final = (
    "POST /spans",
    "POST /traces/{trace_id}/spans",
    "POST /traceparent/spans",
    "POST /heartbeats/{agent}",
    "POST /v1/traces",
)

# Agent and stream names become label values: a conservative charset, and short.
NAME_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _split_names(value: object) -> object:
    """``"Kyle, Joey"`` -> ``("Kyle", "Joey")``; sequences pass through; blanks are dropped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _check_names(values: tuple[str, ...], what: str, *, allow_empty: bool) -> tuple[str, ...]:
    if not values and not allow_empty:
        raise ValueError(f"needs at least one {what}")
    bad = [v for v in values if not _NAME_RE.fullmatch(v)]
    if bad:
        raise ValueError(
            f"invalid {what} name(s) {', '.join(map(repr, bad))}: a letter, then up to 63 letters, "
            "digits, '_', '.' or '-'"
        )
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} listed twice: {', '.join(dupes)}")
    return values


ANY_AGENT: Final = "*"


def _check_token(secret: str) -> None:
    if len(secret) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters (got {len(secret)})")
    if not secret.isprintable() or secret != secret.strip() or " " in secret:
        raise ValueError("must be printable with no whitespace (it travels in an HTTP header)")


def parse_bound_tokens(text: str) -> dict[str, frozenset[str] | None]:
    """``"Kyle,Joey:tok1 Watchdog:tok2 *:tok3"`` -> {tok1: {Kyle, Joey}, tok2: {Watchdog}, tok3: None}.

    Entries are separated by whitespace (a token holds none); in each, the agents come before the
    first ':' (an agent name holds none), the token after it. ValueError names the entry by its
    position and never shows a token.
    """
    out: dict[str, frozenset[str] | None] = {}
    entries = text.split()
    if not entries:
        raise ValueError("no entry: write 'Agent1,Agent2:token' entries separated by spaces")
    for i, entry in enumerate(entries, 1):
        agents_part, colon, token = entry.partition(":")
        where = f"entry {i} (of {len(entries)})"
        if not colon or not agents_part:
            raise ValueError(f"{where} is not 'Agent1,Agent2:token' (agents, a colon, the token)")
        agents = tuple(a for a in agents_part.split(",") if a)
        if agents != (ANY_AGENT,):
            try:
                _check_names(agents, "agent", allow_empty=False)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        try:
            _check_token(token)
        except ValueError as exc:
            raise ValueError(f"{where}: the token {exc}") from None
        if token in out:
            raise ValueError(f"{where}: the same token as an earlier entry (bind it once, to all its agents)")
        out[token] = None if agents == (ANY_AGENT,) else frozenset(agents)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad setting: its environment variable name and why it is bad."""

    setting: str
    why: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.why}"


class Settings(BaseSettings):
    """Every setting of the ark-obs service; each one is an ``ARK_OBS_<NAME>`` environment variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        validate_default=True,
        # an error never repeats the value: it may be a token or a URL with a password
        hide_input_in_errors=True,
    )

    host: str = Field(
        default=DEFAULT_HOST,
        min_length=1,
        description="Address to bind. Loopback by default; a public address needs INGEST_TOKEN "
        "or ALLOW_OPEN_INGEST=true.",
    )
    port: int = Field(
        default=DEFAULT_PORT,
        ge=1,
        le=65535,
        description="TCP port to bind (9871: clear of Prometheus 9090, Alertmanager 9093, Grafana 3000, "
        "node_exporter 9100).",
    )
    trace_store: str = Field(
        default="memory",
        description="Trace store: 'memory' (embedded, one process), redis://host:port/db "
        "(shared by agents on many hosts and by several ark-obs replicas) or "
        "redis+cluster://host:port[,host:port...]/ (Redis Cluster, keys sharded over 16 hash tags; ?shards=N).",
    )
    slo_file: Path | None = Field(
        default=None, description="YAML or TOML file overriding the default SLOs; unset: the seed's four SLOs."
    )
    scrape_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Prometheus' scrape interval of ark-obs: SLO and burn-rate windows must span two "
        "(check-config, ark-obs rules).",
    )
    ingest_token: SecretStr | None = Field(
        default=None,
        description=f"Bearer token required by the write endpoints (at least {MIN_TOKEN_LENGTH} "
        "characters); unset: writes are open.",
    )
    ingest_tokens: SecretStr | None = Field(
        default=None,
        description="Tokens bound to the agents they may write for, whitespace-separated entries "
        "'Agent1,Agent2:token' ('*:token' for any agent); a write for another agent gets 403. Works "
        "beside INGEST_TOKEN (which may write for any agent).",
    )
    allow_open_ingest: bool = Field(
        default=False,
        description="Explicit opt-out: allow open write endpoints on a non-loopback address without a token.",
    )
    max_body_bytes: int = Field(
        default=MIB, ge=1024, le=64 * MIB, description="Largest request body accepted; larger bodies get 413."
    )
    max_batch_spans: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Most spans in one POST /spans batch; more get 413."
    )
    retention_seconds: float = Field(
        default=3600.0, gt=0, le=7 * 86400, description="How far back windowed statistics and SLOs can look."
    )
    slice_seconds: float = Field(
        default=10.0, gt=0, description="Granularity of the sliding window (snapshot interval)."
    )
    max_series_per_metric: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Label sets kept per metric; more are dropped and counted in ark_obs_dropped_total.",
    )
    trace_ttl_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="Idle time after which an in-flight trace is finalized (incomplete if agents are missing).",
    )
    trace_history_seconds: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86400,
        description="How long a finished trace stays answerable on /traces/{id} (dashboards' exemplar links: an "
        "hour), at most MAX_IN_FLIGHT_TRACES of them; never shorter than TRACE_TTL_SECONDS.",
    )
    max_in_flight_traces: int = Field(
        default=100_000, ge=1, le=100_000_000, description="Most traces held in flight; older ones are evicted."
    )
    max_clock_skew_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How far in the future a span may end; spans older than TRACE_TTL_SECONDS or later "
        "are refused (422) or dropped (implausible_time).",
    )
    max_agents_per_trace: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Distinct agents outside PIPELINE one trace may hold; spans of further agents are dropped "
        "and counted (trace_full). Pipeline agents are always admitted.",
    )
    stall_seconds: float = Field(
        default=6.0,
        gt=0,
        le=86400,
        description="An in-flight trace without a span this long is stalled at its first missing pipeline agent "
        "(ark_traces_stalled, GET /traces?status=stalled); 6 s covers the 400 ms latency objective plus an "
        "OpenTelemetry SDK's 5 s export delay.",
    )
    pipeline: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_PIPELINE,
        description="Comma-separated agents every trace must pass, in order.",
    )
    heartbeat_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Interval agents heartbeat at; an agent silent for 1.5 intervals is reported down.",
    )
    spans_as_heartbeats: bool = Field(
        default=True,
        description="An agent that never heartbeats counts as alive while its spans arrive (OpenTelemetry-only "
        "agents), and as unknown again (not down) once none arrived for STALL_SECONDS; false: such agents are "
        "not tracked.",
    )
    max_heartbeat_agents: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Agents outside PIPELINE and KNOWN_AGENTS tracked by heartbeat; beats of more get 503 "
        "(pipeline and known agents are always admitted).",
    )
    known_agents: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_KNOWN_AGENTS,
        description="Comma-separated agents outside PIPELINE (the Watchdog, other named services) whose "
        "heartbeats are always admitted and never forgotten, like the pipeline's; empty: none.",
    )
    heartbeat_forget_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="An agent outside PIPELINE silent this long is forgotten (pipeline agents never are).",
    )
    redis_streams: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated Redis streams whose length is exported as redis_stream_depth "
        "(needs a redis:// TRACE_STORE).",
    )
    store_timeout_seconds: float = Field(
        default=0.25, gt=0, le=30, description="Longest a trace store call may take before the span is dropped."
    )
    shutdown_timeout_seconds: int = Field(
        default=10, ge=1, le=600, description="On SIGTERM, longest wait for in-flight requests to finish."
    )
    keepalive_timeout_seconds: int = Field(
        default=5, ge=1, le=600, description="An idle kept-alive connection is closed after this long."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A request's headers must arrive within this long of the connection (or its first byte); "
        "else the connection is closed.",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A request's body must arrive within this long of its headers; else the connection is closed.",
    )
    max_connections: int = Field(
        default=512,
        ge=8,
        le=100_000,
        description="Open connections (or running requests) past which new requests get 503 (/healthz still "
        "answers); clamped at start below the open-file limit, which is raised toward the hard limit first.",
    )
    log_level: LogLevel = Field(default="info", description="Log level of the service.")

    # state history (ark_obs.traces.revisions) -------------------------------------------------------
    state_revision_max_keys: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="State keys whose last revision is kept for the continuity check; the least recently "
        "written is forgotten beyond (counted in ark_obs_dropped_total).",
    )
    state_revision_recent_max: int = Field(
        default=100, ge=1, le=100_000, description="Revision anomalies GET /state/anomalies keeps (newest)."
    )

    # OpenTelemetry interop (POST /v1/traces, OTel spans around instrumented agent methods) --------------
    otlp_agent_attribute: str = Field(
        default="service.name",
        pattern=r"^[A-Za-z0-9_.\-]{1,255}$",
        description="Resource attribute of an OTLP span that names its agent.",
    )
    otlp_span_agent_attribute: str = Field(
        default="ark.agent",
        pattern=r"^[A-Za-z0-9_.\-]{1,255}$",
        description="Span attribute that, when present, names the agent instead of the resource attribute.",
    )
    max_decompressed_bytes: int = Field(
        default=8 * MIB,
        ge=1024,
        le=256 * MIB,
        description="Largest size a gzip request body may inflate to; more gets 413 without inflating the rest.",
    )
    otel_spans: bool = Field(
        default=False,
        description="Agents: @instrument_agent_method opens an OpenTelemetry span per call (read at decoration).",
    )

    # the status page and the alerts' links ---------------------------------------------------------
    runbook_url: str = Field(
        default="http://127.0.0.1:9871/runbook",
        description="Absolute base URL of the runbook; an alert's section is {base}#{alertname lowercased}.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus whose recording rules give the status page the fleet's numbers (denials, "
        "quarantines, availability, SLO burn); unset: this process' own numbers. The canary analysis uses it "
        "when CANARY_PROMETHEUS_URL is unset.",
    )

    # validators ------------------------------------------------------------------------------------
    @field_validator("pipeline", "redis_streams", "known_agents", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_names(value)

    @field_validator("pipeline")
    @classmethod
    def _pipeline_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_names(value, "agent", allow_empty=False)

    @field_validator("known_agents")
    @classmethod
    def _known_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_names(value, "agent", allow_empty=True)

    @field_validator("redis_streams")
    @classmethod
    def _stream_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # stream keys may hold ':' (``ark:signals``), so they get their own, slightly wider rule
        bad = [v for v in value if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,128}", v)]
        if bad:
            raise ValueError(
                f"invalid stream name(s) {', '.join(map(repr, bad))}: 1-128 letters, digits, '_', '.', ':' or '-'"
            )
        return value

    @field_validator("trace_store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        value = value.strip()
        if value == "memory":
            return value
        shown = redact_url(value)  # the message reaches check-config and the serve log
        if value.startswith(("redis+cluster://", "rediss+cluster://")):
            from ark_obs.traces.redis_cluster import parse_cluster_url

            parse_cluster_url(value)  # its errors show the URL redacted
            return value
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"{shown!r} is not a valid URL") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"must be 'memory' or a redis://, rediss://, unix:// or redis+cluster://host:port,... URL, "
                f"not {shown!r}"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"{shown!r} has no host (e.g. redis://127.0.0.1:6379/0)")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"{shown!r} has an invalid port") from None
        db = parts.path.lstrip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"{shown!r}: the database after the last '/' must be a number")
        return value

    @field_validator("runbook_url", "prometheus_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url(value)!r} must be an absolute http:// or https:// URL")
        return value.rstrip("/") if parts.fragment == "" else value

    @field_validator("slo_file")
    @classmethod
    def _slo_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} does not exist or is not a file")
        if value.suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise ValueError(f"{value} must be a .yaml, .yml or .toml file")
        return value

    @field_validator("ingest_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        _check_token(value.get_secret_value())
        return value

    @field_validator("ingest_tokens")
    @classmethod
    def _bound_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_bound_tokens(value.get_secret_value())  # its errors never show a token
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # derived ---------------------------------------------------------------------------------------
    @property
    def bind_url(self) -> str:
        """The base URL the service answers on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token(self) -> str | None:
        """The ingest token in clear, or None when writes are open."""
        return self.ingest_token.get_secret_value() if self.ingest_token else None

    @property
    def bound_tokens(self) -> dict[str, frozenset[str] | None]:
        """``ARK_OBS_INGEST_TOKENS`` parsed: token -> the agents it may write for (None: any agent)."""
        return parse_bound_tokens(self.ingest_tokens.get_secret_value()) if self.ingest_tokens else {}

    @property
    def writes_open(self) -> bool:
        """True when no token of either kind is set: anyone who can reach the port may write."""
        return self.ingest_token is None and self.ingest_tokens is None

    @property
    def is_loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        return is_loopback(self.host)

    def problems(self) -> list[Problem]:
        """Checks that span several fields; an empty list means the combination is safe to serve."""
        out: list[Problem] = []
        if not self.is_loopback and self.writes_open and not self.allow_open_ingest:
            out.append(
                Problem(
                    env_name("host"),
                    f"{self.host} is not a loopback address and the write endpoints "
                    f"({', '.join(WRITE_ENDPOINTS)}) would be open to anyone who can reach "
                    f"it. Set {env_name('ingest_token')} to a secret of at least {MIN_TOKEN_LENGTH} "
                    f"characters, bind {DEFAULT_HOST}, or set {env_name('allow_open_ingest')}=true to "
                    "accept this on purpose.",
                )
            )
        if self.token is not None and self.token in self.bound_tokens:
            out.append(
                Problem(
                    env_name("ingest_tokens"),
                    f"one of its tokens is also {env_name('ingest_token')}, which may write for any agent: "
                    "the binding would mean nothing; give the bound agents their own token",
                )
            )
        if self.redis_streams and self.trace_store == "memory":
            out.append(
                Problem(
                    env_name("redis_streams"),
                    f"stream depths are read from Redis, but {env_name('trace_store')} is 'memory'; "
                    "set it to a redis:// URL",
                )
            )
        if 2 * self.slice_seconds > self.retention_seconds:
            out.append(
                Problem(
                    env_name("slice_seconds"),
                    f"{self.slice_seconds:g} s: the window keeps at least two slices, so "
                    f"{env_name('retention_seconds')} ({self.retention_seconds:g} s) must be at least twice as long",
                )
            )
        return out

    def warnings(self) -> list[Problem]:
        """Settings that work but are probably a mistake."""
        out: list[Problem] = []
        if self.port in WELL_KNOWN_PORTS:
            out.append(
                Problem(
                    env_name("port"),
                    f"{self.port} is {WELL_KNOWN_PORTS[self.port]}'s default port; a scrape config "
                    f"pointing there may scrape {WELL_KNOWN_PORTS[self.port]} instead of ark-obs",
                )
            )
        return out


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: ``env_name("port") == "ARK_OBS_PORT"``."""
    return ENV_PREFIX + field.upper()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name counts as public."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_valid_name(value: str) -> bool:
    """True when ``value`` is an acceptable agent name (NAME_PATTERN)."""
    return _NAME_RE.fullmatch(value) is not None
