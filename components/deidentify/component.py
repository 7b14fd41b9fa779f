"""De-identify FHIR resources with an Apache Beam pipeline (keyed HMAC pseudonyms, per-patient date shift).

The HMAC key reaches the container as ``CLINFLOW_HMAC_KEY`` from a Kubernetes
Secret (see ``pipelines/clinical_risk.py``), never as a parameter.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/deidentify/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def deidentify(
    raw_data: dsl.Input[dsl.Dataset],
    beam_runner: str,
    deid_data: dsl.Output[dsl.Dataset],
    dead_letter: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.HTML],
    report_json: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.deidentify.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.deidentify.main"],
        args=[
            "--input-data",
            raw_data.path,
            "--output-data",
            deid_data.path,
            "--dead-letter",
            dead_letter.path,
            "--report",
            report.path,
            "--report-json",
            report_json.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
            "--",
            "--runner",
            beam_runner,
        ],
    )
