"""Real stand-ins for external services, for tests, benchmarks and demos (never used in production paths).

``clinflow.testing.fhir_bulk_server`` is a FHIR Bulk Data ``$export`` server with SMART Backend
Services auth and seeded fault injection; ``python -m clinflow.testing.fhir_bulk_server --help``.
"""
