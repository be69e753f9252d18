"""Settings: ARK_OBS_* variables, the .env file, validation of every field at once, cross-field checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from ark_obs.settings import (
    DEFAULT_PIPELINE,
    MIB,
    Settings,
    env_name,
    is_loopback,
    is_valid_name,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ARK_OBS_* variable or .env file of the developer's leaks into a test."""
    for key in list(os.environ):
        if key.startswith("ARK_OBS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    """Loopback on 9871, memory store, 1 MiB bodies, the seed's pipeline, no token."""
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 9871)
    assert s.trace_store == "memory"
    assert s.max_body_bytes == MIB
    assert s.pipeline == DEFAULT_PIPELINE == ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
    assert s.ingest_token is None and s.token is None
    assert s.allow_open_ingest is False
    assert s.bind_url == "http://127.0.0.1:9871"
    assert s.problems() == [] and s.warnings() == []


def test_default_port_clear_of_neighbours() -> None:
    """The default port is none of Prometheus', Alertmanager's, Grafana's or node_exporter's."""
    assert Settings().port not in (9090, 9093, 3000, 9100)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """ARK_OBS_<NAME> sets each field; comma lists split and trim; log level is case-insensitive."""
    monkeypatch.setenv("ARK_OBS_PORT", "9999")
    monkeypatch.setenv("ARK_OBS_PIPELINE", " Kyle , Joey,HRM ")
    monkeypatch.setenv("ARK_OBS_REDIS_STREAMS", "ark:signals,ark:decisions")
    monkeypatch.setenv("ARK_OBS_TRACE_STORE", "redis://127.0.0.1:6379/2")
    monkeypatch.setenv("ARK_OBS_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ARK_OBS_INGEST_TOKEN", "s3cret-s3cret-s3cret")
    s = Settings()
    assert s.port == 9999
    assert s.pipeline == ("Kyle", "Joey", "HRM")
    assert s.redis_streams == ("ark:signals", "ark:decisions")
    assert s.trace_store == "redis://127.0.0.1:6379/2"
    assert s.log_level == "debug"
    assert s.token == "s3cret-s3cret-s3cret"
    assert "s3cret" not in repr(s)


def test_empty_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exported but empty variable (ARK_OBS_INGEST_TOKEN=) leaves the default in place."""
    monkeypatch.setenv("ARK_OBS_INGEST_TOKEN", "")
    monkeypatch.setenv("ARK_OBS_PORT", "")
    s = Settings()
    assert s.ingest_token is None and s.port == 9871


def test_env_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """.env in the working directory is read; the environment beats it; constructor arguments beat both."""
    (tmp_path / ".env").write_text("ARK_OBS_PORT=9100\nARK_OBS_HOST=127.0.0.2\nARK_OBS_MAX_BATCH_SPANS=7\n")
    s = Settings()
    assert (s.port, s.host, s.max_batch_spans) == (9100, "127.0.0.2", 7)
    monkeypatch.setenv("ARK_OBS_PORT", "9200")
    assert Settings().port == 9200
    assert Settings(port=9300).port == 9300


def test_every_bad_field_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five bad variables give five errors, each naming its field."""
    monkeypatch.setenv("ARK_OBS_PORT", "70000")
    monkeypatch.setenv("ARK_OBS_TRACE_STORE", "http://localhost")
    monkeypatch.setenv("ARK_OBS_INGEST_TOKEN", "short")
    monkeypatch.setenv("ARK_OBS_PIPELINE", "Kyle,bad name")
    monkeypatch.setenv("ARK_OBS_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError) as info:
        Settings()
    fields = sorted(str(e["loc"][0]) for e in info.value.errors())
    assert fields == ["ingest_token", "log_level", "pipeline", "port", "trace_store"]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("trace_store", "redis://", "no host"),
        ("trace_store", "redis://h:99999/0", "invalid port"),
        ("trace_store", "redis://h:6379/abc", "must be a number"),
        ("pipeline", " , ", "at least one agent"),
        ("pipeline", "Kyle,Kyle", "listed twice"),
        ("pipeline", "9lives", "invalid agent"),
        ("redis_streams", "ok,not ok", "invalid stream"),
        ("slo_file", "/nonexistent/slos.yaml", "does not exist"),
        ("ingest_token", "has a space in it!!", "no whitespace"),
        ("max_body_bytes", "10", "greater than or equal"),
        ("slice_seconds", "0", "greater than"),
        ("port", "0", "greater than or equal"),
    ],
)
def test_field_rules(monkeypatch: pytest.MonkeyPatch, field: str, value: str, fragment: str) -> None:
    """Each field rejects its bad values with a message that says why."""
    monkeypatch.setenv(env_name(field), value)
    with pytest.raises(ValidationError) as info:
        Settings()
    errors = info.value.errors()
    assert [e["loc"][0] for e in errors] == [field]
    assert fragment in errors[0]["msg"]


def test_slo_file_suffix(tmp_path: Path) -> None:
    """An SLO file must be TOML or YAML."""
    f = tmp_path / "slos.json"
    f.write_text("{}")
    with pytest.raises(ValidationError, match="yaml"):
        Settings(slo_file=f)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses and 'localhost' count as private; any other name is public."""
    assert is_loopback(host) is loopback


def test_open_ingest_on_public_address_is_a_problem() -> None:
    """0.0.0.0 without a token is refused, with the fix spelled out; a token or the opt-out clears it."""
    problems = Settings(host="0.0.0.0").problems()
    assert len(problems) == 1
    p = problems[0]
    assert p.setting == "ARK_OBS_HOST"
    for fix in ("ARK_OBS_INGEST_TOKEN", "ARK_OBS_ALLOW_OPEN_INGEST=true", "127.0.0.1"):
        assert fix in p.why
    assert Settings(host="0.0.0.0", ingest_token="x" * 16).problems() == []
    assert Settings(host="0.0.0.0", allow_open_ingest=True).problems() == []


def test_cross_field_problems() -> None:
    """Redis streams need a Redis store; a slice longer than the retention is refused."""
    names = [p.setting for p in Settings(redis_streams="a", slice_seconds=100, retention_seconds=50).problems()]
    assert names == ["ARK_OBS_REDIS_STREAMS", "ARK_OBS_SLICE_SECONDS"]
    # the window keeps at least two slices: a slice over half the retention is refused too
    assert [p.setting for p in Settings(slice_seconds=40, retention_seconds=60).problems()] == ["ARK_OBS_SLICE_SECONDS"]
    assert Settings(slice_seconds=30, retention_seconds=60).problems() == []


def test_neighbour_port_warns() -> None:
    """Port 9090 works but warns that a scrape config would hit Prometheus."""
    warnings = Settings(port=9090).warnings()
    assert len(warnings) == 1 and "Prometheus" in warnings[0].why


def test_bind_url_ipv6() -> None:
    """IPv6 hosts are bracketed in the URL."""
    assert Settings(host="::1", port=1234).bind_url == "http://[::1]:1234"


def test_agent_names() -> None:
    """Agent names: a letter first, then letters, digits, '_', '.', '-'; at most 64; no trailing newline."""
    assert is_valid_name("Kyle") and is_valid_name("agent-2.b_c") and is_valid_name("A" * 64)
    for bad in ("", "9lives", "has space", "A" * 65, "Kyle\n", "Kyle{}", "Kyl\u00e9"):
        assert not is_valid_name(bad), bad


def test_env_example_documents_every_setting() -> None:
    """.env.example names every setting with its description, and its values are the defaults."""
    text = (ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        assert env_name(name) + "=" in text, name
        assert field.description and field.description.split(".")[0][:60] in text.replace("\n# ", " "), name
    values = dict(
        line.lstrip("# ").split("=", 1)
        for line in text.splitlines()
        if line.lstrip("# ").startswith("ARK_OBS_") and "=" in line
    )
    active = {
        k: v
        for k, v in values.items()
        if not k.endswith(("SLO_FILE", "INGEST_TOKEN", "REDIS_STREAMS", "_PROMETHEUS_URL"))
    }
    s = Settings(_env_file=None, **{k.removeprefix("ARK_OBS_").lower(): v for k, v in active.items()})  # type: ignore[call-arg]
    assert s == Settings(_env_file=None)  # type: ignore[call-arg]


def test_every_field_described() -> None:
    """Every setting has a description (the source of .env.example and the README table)."""
    assert all(f.description for f in Settings.model_fields.values())
