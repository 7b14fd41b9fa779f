"""Train: run a TFX pipeline (ExampleGen -> StatisticsGen -> SchemaGen -> Trainer -> Pusher) inside the step.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/train/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def train(
    training_set: dsl.Input[dsl.Dataset],
    seed: int,
    epochs: int,
    model: dsl.Output[dsl.Model],
    eval_examples: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.train.main`` in the ``tfx`` image."""
    return dsl.ContainerSpec(
        image=images.TFX.reference(),
        command=["python", "-m", "components.train.main"],
        args=[
            "--training-set",
            training_set.path,
            "--seed",
            seed,
            "--epochs",
            epochs,
            "--model",
            model.path,
            "--eval-examples",
            eval_examples.path,
            "--metrics",
            metrics.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
