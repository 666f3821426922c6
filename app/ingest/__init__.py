"""Event ingestion: the ingestor (per-slot Function calls), identify/merge, session views."""
