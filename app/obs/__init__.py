"""Observability: the metrics registry, its flusher and views, request-context middleware."""
