"""The HTTP API: the Starlette app, shared request helpers, one routes module per resource,
static pages."""
