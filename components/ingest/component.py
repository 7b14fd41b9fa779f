"""Ingest: stage clinical files (file drop and/or FHIR Bulk $export), validate each lane, promote or quarantine.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/ingest/main.py`` and its sibling modules. The Bulk Data client id and
private key reach the container as ``CLINFLOW_BULK_CLIENT_ID`` / ``CLINFLOW_BULK_PRIVATE_KEY``
from an optional Kubernetes Secret (see ``pipelines/clinical_risk.py``), never as parameters.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def ingest(
    source_uri: str,
    store_uri: str,
    bulk_url: str,
    bulk_types: str,
    raw_data: dsl.Output[dsl.Dataset],
    manifest: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.ingest.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.ingest.main"],
        args=[
            "--source",
            source_uri,
            "--store",
            store_uri,
            "--bulk-url",
            bulk_url,
            "--bulk-type",
            bulk_types,
            "--output-data",
            raw_data.path,
            "--manifest",
            manifest.path,
            "--report",
            report.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
