"""A real ``prometheus`` on a free loopback port, loaded with the shipped ARK rules.

``prometheus_factory`` (session) starts servers on demand and stops every one of them at the end
of the session::

    def test_rules(prometheus_factory):
        prom = prometheus_factory(["127.0.0.1:9871"])          # job "ark-obs", 1 s scrape + eval
        prom.wait_targets_up()                                  # first scrape comes after ~5 s
        assert prom.query_value("ark:availability:ratio_5m") == 1.0

Targets are ``"host:port"`` strings (job ``ark-obs``) or ``ScrapeTarget(address, labels, job)``,
e.g. ``ScrapeTarget("127.0.0.1:9872", {"track": "canary"})``. The server has exemplar storage on,
temp storage, and ``--web.enable-lifecycle`` (``reload()``). Without the binary the tests skip
(``apt-get install prometheus``); with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from plugins.ci import missing_dependency
from plugins.net import free_port as _free_port

INSTALL_HINT = "prometheus not found: install it with `sudo apt-get install -y prometheus`"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RULE_FILES: tuple[Path, ...] = tuple(sorted((REPO_ROOT / "deploy/prometheus/rules").glob("*.yml")))
ARK_OBS_JOB = "ark-obs"

T = TypeVar("T")


class PrometheusQueryError(RuntimeError):
    """The HTTP API answered with an error (a parse error, a timeout, ...)."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape target: address, target labels (e.g. ``track``) and job name."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    job: str = ARK_OBS_JOB


def prometheus_binary() -> str:
    """The prometheus path, or skip (fail under CI=true) with the install command."""
    binary = shutil.which("prometheus")
    if binary is None:
        missing_dependency(INSTALL_HINT)
    return binary


def render_config(
    targets: Iterable[str | ScrapeTarget],
    rule_files: Sequence[Path],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanager: str | None = None,
) -> dict[str, Any]:
    """A prometheus.yml as a dict: one scrape job per job name, one static config per label set.

    The job "ark-obs" is always present (possibly with no targets) because the ARK rules read
    ``up{job="ark-obs"}``: with no target, ArkObsDown fires through ``absent()``, as in production.
    """
    jobs: dict[str, dict[tuple[tuple[str, str], ...], list[str]]] = {ARK_OBS_JOB: {}}
    for target in targets:
        t = ScrapeTarget(target) if isinstance(target, str) else target
        groups = jobs.setdefault(t.job, {})
        groups.setdefault(tuple(sorted(t.labels.items())), []).append(t.address)
    scrape_configs = [
        {
            "job_name": job,
            "static_configs": [
                {"targets": addresses, **({"labels": dict(labels)} if labels else {})}
                for labels, addresses in groups.items()
            ],
        }
        for job, groups in jobs.items()
    ]
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape_configs,
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


class PrometheusServer:
    """A running ``prometheus`` process and a small client for its HTTP API."""

    def __init__(self, binary: str, workdir: Path, config: Mapping[str, Any]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """Prometheus' own log so far (for failure messages)."""
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        """Start on a free port and wait for ``/-/ready``; retries once if the port was taken."""
        for attempt in range(3):
            self.port = _free_port()
            data = self.workdir / f"data-{attempt}"
            with open(self.workdir / "prometheus.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={self.config_path}",
                        f"--storage.tsdb.path={data}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--enable-feature=exemplar-storage",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._http = httpx.Client(base_url=self.url, timeout=10.0)
            if self._wait_ready(timeout):
                return
            if "address already in use" not in self.log:
                break
            self.stop()
        tail = self.log[-3000:]
        self.stop()
        raise RuntimeError(f"prometheus did not become ready on port {self.port}:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None and self._http is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self._http.get("/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, wait, SIGKILL); idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    # --- HTTP API ------------------------------------------------------------------------------
    def _api(self, method: str, path: str, **params: Any) -> Any:
        if self._http is None:
            raise RuntimeError("prometheus is not running")
        params = {k: v for k, v in params.items() if v is not None}
        # POST keeps long PromQL out of the URL; the read-only endpoints are GET-only.
        post = method == "POST"
        response = self._http.post(path, data=params) if post else self._http.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (raises PrometheusQueryError, e.g. on a parse error).

        A vector gives ``[{"metric": {...}, "value": [ts, "v"]}, ...]``; a scalar ``[ts, "v"]``.
        """
        data = self._api("POST", "/api/v1/query", query=expr, time=at)
        return list(data["result"])

    def query_value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query that returns at most one series (None when empty)."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} returned {len(result)} series, expected at most one: {result}")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query; the ``result`` list of ``{"metric", "values"}``."""
        data = self._api("POST", "/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars for the series ``expr`` selects, as ``/api/v1/query_exemplars`` returns them."""
        return list(self._api("POST", "/api/v1/query_exemplars", query=expr, start=start, end=end))

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), optionally only those in ``state``."""
        alerts = list(self._api("GET", "/api/v1/alerts")["alerts"])
        return [a for a in alerts if state is None or a["state"] == state]

    def rules(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rule groups with their rules, health and last evaluation (``kind``: "record" or "alert")."""
        return list(self._api("GET", "/api/v1/rules", type=kind)["groups"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health."""
        return list(self._api("GET", "/api/v1/targets")["activeTargets"])

    def wait_targets_up(self, samples: int = 2, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every target is up with ``samples`` scrapes stored (rate() needs 2); return them.

        Prometheus 2.42 applies new targets on a 5 s tick, so the first scrape comes up to ~5 s
        after ``/-/ready``.
        """

        def ready() -> list[dict[str, Any]] | None:
            targets = self.targets()
            if not targets or any(t["health"] != "up" for t in targets):
                return None
            stored = self.query("count_over_time(up[5m])")
            if len(stored) < len(targets) or any(float(r["value"][1]) < samples for r in stored):
                return None
            return targets

        return self.wait_until(ready, timeout=timeout, what=f"every target up with {samples} scrapes")

    def reload(self) -> None:
        """Re-read the configuration file (after editing ``config_path``)."""
        assert self._http is not None
        self._http.post("/-/reload").raise_for_status()

    def wait_until(
        self, probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.2, what: str = ""
    ) -> T:
        """Poll ``probe`` until it returns something truthy, and return it; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            last = probe()
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {timeout} s: {what or probe!r} (last: {last!r})")
            time.sleep(interval)


class PrometheusFactory:
    """Starts ``PrometheusServer``s in fresh temp dirs; ``close()`` stops them all."""

    def __init__(self, binary: str, tmp: pytest.TempPathFactory) -> None:
        self._binary = binary
        self._tmp = tmp
        self._servers: list[PrometheusServer] = []

    def __call__(
        self,
        targets: Iterable[str | ScrapeTarget] = (),
        *,
        rule_files: Sequence[Path] = SHIPPED_RULE_FILES,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        alertmanager: str | None = None,
    ) -> PrometheusServer:
        """Start a Prometheus scraping ``targets`` with ``rule_files`` (default: the shipped rules)."""
        config = render_config(
            targets,
            rule_files,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            alertmanager=alertmanager,
        )
        server = PrometheusServer(self._binary, self._tmp.mktemp("prometheus"), config)
        self._servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        """Stop every server this factory started."""
        for server in self._servers:
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """Start real Prometheus servers on free loopback ports; all are stopped at session end."""
    factory = PrometheusFactory(prometheus_binary(), tmp_path_factory)
    try:
        yield factory
    finally:
        factory.close()
