"""Validation of rendered custom resources against a CustomResourceDefinition's schema.

Plain JSON Schema (Draft 7) on ``spec.versions[*].schema.openAPIV3Schema`` catches
wrong types and missing required fields. The Kubernetes API server also drops
(or, with strict field validation, rejects) fields its structural schema does not
declare; JSON Schema allows them, so :func:`unknown_fields` checks that separately.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

from clinflow.errors import UserError

PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"


@functools.lru_cache(maxsize=4)
def load_crd(crd_path: str) -> dict[str, Any]:
    """Loads a CRD YAML file (cached: the InferenceService CRD is about 2 MB).

    Args:
        crd_path: Path to a ``CustomResourceDefinition`` YAML document.

    Returns:
        The parsed CRD.

    Raises:
        UserError: The file is missing or is not a CRD.
    """
    path = Path(crd_path)
    if not path.is_file():
        raise UserError(f"{path}: CRD file not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as handle:
        crd = yaml.load(handle, Loader=loader)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise UserError(f"{path}: not a CustomResourceDefinition")
    return crd


def version_schema(crd: Mapping[str, Any], api_version: str, kind: str, source: str) -> dict[str, Any]:
    """Finds the OpenAPI v3 schema of one served version of a CRD.

    Args:
        crd: The parsed CRD.
        api_version: The resource's ``apiVersion`` (``group/version``).
        kind: The resource's ``kind``.
        source: The CRD file, for messages.

    Returns:
        The ``openAPIV3Schema`` of that version.

    Raises:
        UserError: The CRD is for another group/kind or lacks the version.
    """
    spec = crd.get("spec", {})
    group, _, version = api_version.rpartition("/")
    if spec.get("group") != group or spec.get("names", {}).get("kind") != kind:
        raise UserError(
            f"{source}: CRD is for {spec.get('group')}/{spec.get('names', {}).get('kind')}, not {group}/{kind}"
        )
    for entry in spec.get("versions", []):
        if entry.get("name") == version and entry.get("served", False):
            return dict(entry["schema"]["openAPIV3Schema"])
    raise UserError(f"{source}: CRD does not serve version {version} of {kind}")


def unknown_fields(instance: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Lists fields the structural schema does not declare (the API server would prune them).

    Args:
        instance: A value of the manifest.
        schema: Its schema node.
        path: Dotted path of ``instance``, for messages.

    Returns:
        Dotted paths of undeclared fields.
    """
    if schema.get(PRESERVE_UNKNOWN):
        return []
    found: list[str] = []
    if isinstance(instance, Mapping):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in instance.items():
            child = f"{path}.{key}" if path else str(key)
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], child)
            elif isinstance(additional, Mapping):
                found += unknown_fields(value, additional, child)
            elif properties is not None and not additional:
                found.append(child)
    elif isinstance(instance, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def schema_errors(manifest: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Validates a manifest against a CRD version schema.

    Args:
        manifest: The resource as a plain dict.
        schema: The version's ``openAPIV3Schema``.

    Returns:
        Readable errors (``path: message``); empty when valid.
    """
    validator = Draft7Validator(schema)
    errors = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    ]
    errors += [f"{field}: field not declared by the CRD schema" for field in unknown_fields(manifest, schema)]
    return errors


def validate_against_crd(manifest: Mapping[str, Any], crd_path: Path) -> None:
    """Validates a custom resource against its CRD file.

    Args:
        manifest: The resource as a plain dict (``apiVersion``, ``kind``, ...).
        crd_path: The CRD YAML file.

    Raises:
        UserError: The manifest does not conform; the message lists every error.
    """
    crd = load_crd(str(crd_path))
    schema = version_schema(crd, str(manifest.get("apiVersion", "")), str(manifest.get("kind", "")), str(crd_path))
    errors = schema_errors(manifest, schema)
    if errors:
        name = manifest.get("metadata", {}).get("name", "<unnamed>")
        raise UserError(f"{manifest.get('kind')} {name} does not validate against {crd_path}: " + "; ".join(errors))
