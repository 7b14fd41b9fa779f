"""End to end on a real Kubeflow Pipelines cluster; skipped unless KFP_HOST is set.

Needs: the images pushed (`skaffold build`), the `clinflow-hmac-key` Secret in the run's
namespace, and CLINFLOW_E2E_SOURCE_URI pointing at a FHIR export the cluster can read
(e.g. /gcs/<bucket>/fhir-export).
"""

import os

import pytest

pytestmark = pytest.mark.e2e
HOST = os.environ.get("KFP_HOST")


@pytest.mark.skipif(not HOST, reason="KFP_HOST not set: no Kubeflow Pipelines cluster to run against")
def test_compiled_pipeline_succeeds_on_the_cluster():
    import kfp

    from pipelines.compile import default_spec_path
    from pipelines.submit import submit_run

    source = os.environ.get("CLINFLOW_E2E_SOURCE_URI")
    if not source:
        pytest.skip("CLINFLOW_E2E_SOURCE_URI not set")
    run_id = submit_run(HOST, default_spec_path(), {"source_uri": source}, experiment="clinflow-e2e")
    client = kfp.Client(host=HOST, existing_token=os.environ.get("KFP_TOKEN") or None)
    run = client.wait_for_run_completion(run_id, timeout=3 * 3600)
    assert run.state == "SUCCEEDED"
