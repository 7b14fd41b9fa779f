"""Deploy: render the KServe InferenceService (canary) for the model, validated against the CRD.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/deploy/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def deploy(
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    model_name: str,
    namespace: str,
    canary_traffic_percent: int,
    inference_service: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.deploy.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.deploy.main"],
        args=[
            "--model",
            model.path,
            "--evaluation",
            evaluation.path,
            "--storage-uri",
            model.uri,
            "--model-name",
            model_name,
            "--namespace",
            namespace,
            "--canary-traffic-percent",
            canary_traffic_percent,
            "--inference-service",
            inference_service.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
