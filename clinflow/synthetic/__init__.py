"""Deterministic synthetic FHIR Bulk Data with realistic fake PHI and a learnable risk signal.

``generate_fhir_bulk(output_dir, patients, seed)`` writes the export; ``python -m
clinflow.synthetic --help`` is the command line.
"""

from clinflow.synthetic.generator import RESOURCE_TYPES, file_name, generate_fhir_bulk

__all__ = ["RESOURCE_TYPES", "file_name", "generate_fhir_bulk"]
