"""OpenTelemetry tracing, off unless the standard OTEL_* variables name an OTLP endpoint."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing() -> TracerProvider | None:
    """Install a tracer provider that exports spans over OTLP/HTTP, when configured.

    Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ variant) is
    set and OTEL_SDK_DISABLED is not "true". The exporter reads its other
    settings (headers, timeout, compression) from the same standard variables,
    and OTEL_SERVICE_NAME names the service (default: plan-service). Returns
    the provider, to shut down at exit, or None when tracing stays off.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    endpoint = next(
        (os.environ[name] for name in _ENDPOINT_VARIABLES if os.environ.get(name)), None
    )
    if endpoint is None:
        return None
    # Imported only when used: the exporter pulls in protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service_name = os.environ.get("OTEL_SERVICE_NAME", "plan-service")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logger.info("tracing on exporter=otlp-http endpoint=%s service=%s", endpoint, service_name)
    return provider
