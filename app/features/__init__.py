"""The feature store: definitions, online reads and ingest, point-in-time offline computation."""
