from __future__ import annotations

from pathlib import Path

import pytest

from clinflow.synthetic.dicom import generate_dicom

PATIENTS = [("12345678", "SMITH^JOHN", "1950-02-03"), ("87654321", "DOE^JANE", "1980-05-06")]


@pytest.fixture(scope="session")
def synthetic_dicom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_dicom(
        tmp_path_factory.mktemp("synthetic-dicom"), PATIENTS, seed=3, studies_per_patient=2, burned_in_fraction=0.5
    )


@pytest.fixture(scope="session")
def dicom_samples(shared_data: Path) -> Path:
    path = shared_data / "dicom-deid-samples"
    if not path.is_dir():
        pytest.skip("dicom-deid-samples absent")
    return path
