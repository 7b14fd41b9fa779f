"""The clinical-risk pipeline: ingest -> deidentify -> validate -> features -> train -> evaluate -> deploy.

No ``from __future__ import annotations`` here: KFP reads the real annotations.
"""

from kfp import dsl, kubernetes

from clinflow.prediction_task import TARGET_DESCRIPTION
from components.deidentify.component import deidentify
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.features.component import features
from components.ingest.component import ingest
from components.train.component import train
from components.validate.component import validate

PIPELINE_NAME = "clinflow-clinical-risk"
HMAC_SECRET_NAME = "clinflow-hmac-key"
HMAC_SECRET_KEY = "key"
HMAC_ENV_VAR = "CLINFLOW_HMAC_KEY"
# Optional: only a pipeline run with bulk_url against a SMART-protected server needs it.
BULK_SECRET_NAME = "clinflow-bulk-client"
BULK_SECRET_KEYS = {"client-id": "CLINFLOW_BULK_CLIENT_ID", "private-key": "CLINFLOW_BULK_PRIVATE_KEY"}

# (cpu request, memory request, memory limit) per step on a cluster; the local runner ignores them.
STEP_RESOURCES: dict[str, tuple[str, str, str]] = {
    "ingest": ("1", "2G", "4G"),
    "deidentify": ("2", "4G", "8G"),
    "validate": ("1", "4G", "8G"),
    "features": ("1", "4G", "8G"),
    "train": ("2", "8G", "12G"),
    "evaluate": ("1", "4G", "8G"),
    "deploy": ("0.5", "1G", "2G"),
}


def _sized(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    """Applies the step's resource requests and a display name to a task."""
    cpu, memory_request, memory_limit = STEP_RESOURCES[step]
    return (
        task.set_display_name(step)
        .set_cpu_request(cpu)
        .set_memory_request(memory_request)
        .set_memory_limit(memory_limit)
    )


@dsl.pipeline(name=PIPELINE_NAME, description=f"Clinical risk model. Target: {TARGET_DESCRIPTION}.")
def clinical_risk_pipeline(
    source_uri: str,
    store_uri: str = "",
    bulk_url: str = "",
    bulk_types: str = "",
    beam_runner: str = "DirectRunner",
    seed: int = 42,
    epochs: int = 12,
    model_name: str = "clinflow-risk",
    namespace: str = "clinflow",
    canary_traffic_percent: int = 10,
) -> None:
    """Builds the seven-step pipeline.

    Args:
        source_uri: File drop directory (local path, or a ``/gcs/...`` mount on a cluster) holding
            FHIR Bulk NDJSON, DICOM, device logs and PDFs; empty when ``bulk_url`` is given.
        store_uri: Zone store for staging/quarantine/clean (``gs://bucket/prefix`` on a cluster;
            empty = inside the run's manifest artifact).
        bulk_url: FHIR server base URL to run a Bulk Data ``$export`` against (empty = none).
        bulk_types: Comma-separated resource types for the export's ``_type`` (empty = all).
        beam_runner: Apache Beam runner for de-identification (DirectRunner, DataflowRunner,
            FlinkRunner, SparkRunner).
        seed: Seed for the split and for training.
        epochs: Training epochs.
        model_name: InferenceService name.
        namespace: Kubernetes namespace to deploy into.
        canary_traffic_percent: Traffic share for the new model revision.
    """
    ingested = _sized(
        ingest(source_uri=source_uri, store_uri=store_uri, bulk_url=bulk_url, bulk_types=bulk_types), "ingest"
    )
    kubernetes.use_secret_as_env(
        ingested, secret_name=BULK_SECRET_NAME, secret_key_to_env=BULK_SECRET_KEYS, optional=True
    )
    deidentified = _sized(deidentify(raw_data=ingested.outputs["raw_data"], beam_runner=beam_runner), "deidentify")
    kubernetes.use_secret_as_env(
        deidentified,
        secret_name=HMAC_SECRET_NAME,
        secret_key_to_env={HMAC_SECRET_KEY: HMAC_ENV_VAR},
    )
    validated = _sized(validate(deid_data=deidentified.outputs["deid_data"]), "validate")
    featurized = _sized(features(tables=validated.outputs["tables"]), "features")
    trained = _sized(train(training_set=featurized.outputs["training_set"], seed=seed, epochs=epochs), "train")
    evaluated = _sized(
        evaluate(model=trained.outputs["model"], eval_examples=trained.outputs["eval_examples"]), "evaluate"
    )
    _sized(
        deploy(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            model_name=model_name,
            namespace=namespace,
            canary_traffic_percent=canary_traffic_percent,
        ),
        "deploy",
    )
