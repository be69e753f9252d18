"""The HTTP service: Prometheus scrapes, JSON queries, span and heartbeat ingest, the status page.

Modules: ``app`` (the factory composing the routers), ``wiring`` (the collector built from settings,
background hooks, shutdown), ``routes/`` (one router per area), ``api`` (request and response models),
``exposition`` and ``openmetrics`` (the Prometheus formats), ``middleware`` (body limit, HEAD),
``validation`` (bounded 422s, reading a span batch), ``auth`` (the ingest token), ``connections``
(deadlines and caps at the connection level, for uvicorn), ``status_page`` and ``static/`` (the page at
/), ``docs_ui`` (Swagger UI served from the package).
"""

from ark_obs.service.app import create_app
from ark_obs.service.wiring import BackgroundHook, Service, build_collector, freeze_long_lived_objects

__all__ = ["BackgroundHook", "Service", "build_collector", "create_app", "freeze_long_lived_objects"]
