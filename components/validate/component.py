"""Validate: build the analytic tables and check them with TFDV against the curated schema.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/validate/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def validate(
    deid_data: dsl.Input[dsl.Dataset],
    tables: dsl.Output[dsl.Dataset],
    statistics: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.validate.main`` in the ``tfx`` image."""
    return dsl.ContainerSpec(
        image=images.TFX.reference(),
        command=["python", "-m", "components.validate.main"],
        args=[
            "--input-data",
            deid_data.path,
            "--tables",
            tables.path,
            "--statistics",
            statistics.path,
            "--report",
            report.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
