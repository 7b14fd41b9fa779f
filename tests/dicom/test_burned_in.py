from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom

from components.deidentify.dicom.deidentify import deidentify_dicom
from components.deidentify.dicom.policy import parse_dicom_policy

KEY = b"test-only-key-0123456789abcdef0123456789abcdef"

QUARANTINE = parse_dicom_policy({})
MASK = parse_dicom_policy({"burned_in": "mask"})


def test_shared_samples_burned_in(dicom_samples: Path):
    deid = dicom_samples / "deid-data"
    rgb = deidentify_dicom((deid / "RGB_IMAGE.dcm").read_bytes(), KEY, QUARANTINE, {})
    assert rgb.outcome == "quarantined" and rgb.reason_code == "burned_in_text_detected" and rgb.burned_in == "ocr"
    assert rgb.output is None
    grey = deidentify_dicom((deid / "GREYSCALE_IMAGE.dcm").read_bytes(), KEY, QUARANTINE, {})
    assert grey.outcome == "quarantined" and grey.burned_in.startswith("tag")
    for name in ("ctbrain1.dcm", "burned_in_missing.dcm"):
        path = next(dicom_samples.rglob(name))
        result = deidentify_dicom(path.read_bytes(), KEY, QUARANTINE, {})
        assert result.outcome == "deidentified" and result.ocr_words == 0
    print("OCR words: RGB", rgb.ocr_words, "GREYSCALE", grey.ocr_words)


def test_mask_synthetic_burned_in(synthetic_dicom: list[Path]):
    burned = [p for p in synthetic_dicom if "BurnedInAnnotation" not in pydicom.dcmread(p, stop_before_pixels=True)]
    assert burned
    result = deidentify_dicom(burned[0].read_bytes(), KEY, MASK, {})
    assert result.outcome == "deidentified", result.reason_code
    assert result.burned_in == "masked"
    out = pydicom.dcmread(BytesIO(result.output))
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert out.pixel_array.shape[:2] == (256, 256)
