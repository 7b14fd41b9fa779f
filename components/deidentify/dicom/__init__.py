"""DICOM de-identification per DICOM PS3.15 Annex E, driven by the standard's Table E.1-1.

Public entry points (pure functions, no I/O besides the bytes passed in):

- :func:`components.deidentify.dicom.deidentify.deidentify_dicom`: bytes in, :class:`DicomResult` out.
- :func:`components.deidentify.dicom.deidentify.dicom_identifying_values` and
  :func:`components.deidentify.dicom.deidentify.scan_dicom_output`: the residual-PHI scan.
- :func:`components.deidentify.dicom.policy.parse_dicom_policy`: the ``dicom:`` policy section.
- :func:`components.deidentify.dicom.writer.write_part10`: the raw-copying Part 10 writer it uses.
"""
