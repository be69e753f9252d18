"""One router per area of the HTTP API, composed by ``ark_obs.service.app.create_app``.

``scrape`` (/metrics, /metrics/json), ``health`` (/healthz, /readyz), ``slos`` (/slos), ``traces``
(/traces, /traces/{id}), ``ingest`` (POST /spans, /traces/{id}/spans, /traceparent/spans), ``heartbeats``
(POST /heartbeats/{agent}), ``state`` (/state/anomalies). Each module's ``router(service)`` builds its
routes over the one ``Service`` the app serves.
"""
