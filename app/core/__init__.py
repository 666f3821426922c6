"""Foundations every layer uses: settings, errors, logging, the event schema, taxonomy, keys."""
