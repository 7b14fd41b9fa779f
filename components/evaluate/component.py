"""Evaluate: discrimination, calibration, fairness by sex, and promotion gates.

KFP interface only: typed inputs/outputs and the container command. The logic
lives in ``components/evaluate/main.py`` and its sibling modules.
"""

from kfp import dsl

from clinflow import images


@dsl.container_component
def evaluate(
    model: dsl.Input[dsl.Model],
    eval_examples: dsl.Input[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    evaluation: dsl.Output[dsl.Artifact],
) -> dsl.ContainerSpec:
    """Runs ``python -m components.evaluate.main`` in the ``platform`` image."""
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-m", "components.evaluate.main"],
        args=[
            "--model",
            model.path,
            "--eval-examples",
            eval_examples.path,
            "--metrics",
            metrics.path,
            "--classification-metrics",
            classification_metrics.path,
            "--report",
            report.path,
            "--evaluation",
            evaluation.path,
            "--executor-output",
            dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER,
        ],
    )
