"""Bad-input corpus for the ingest lanes: built deterministically into a directory by ``builder``."""
