"""Features: apply the Feast repo, build a point-in-time training set, materialize online.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/features/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def features(
    tables: dsl.Input[dsl.Dataset],
    training_set: dsl.Output[dsl.Dataset],
    feature_store: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.features.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.features.main"],
        args=[
            "--tables",
            tables.path,
            "--training-set",
            training_set.path,
            "--feature-store",
            feature_store.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
