"""Ingest: verify a FHIR Bulk Data export and stage it into the clean zone.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/ingest/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def ingest(
    source_uri: str,
    raw_data: dsl.Output[dsl.Dataset],
    manifest: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.ingest.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.ingest.main"],
        args=[
            "--source",
            source_uri,
            "--output-data",
            raw_data.path,
            "--manifest",
            manifest.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
