"""DICOM de-identification per DICOM PS3.15 Annex E, driven by the standard's Table E.1-1.

Public entry points (pure functions, no I/O besides the bytes passed in):

- :func:`components.deidentify.dicom.deidentify.deidentify_dicom`: bytes in, :class:`DicomResult` out.
- :func:`components.deidentify.dicom.residual.residual_hits`: the DICOM lane's residual-PHI self-check
  (:func:`components.deidentify.dicom.residual.input_identifying_values` of the input searched by
  :func:`components.deidentify.dicom.residual.scan_dicom_output` in the output); the rules for an input's
  identifying values are :func:`components.deidentify.dicom.deidentify.dicom_identifying_values`.
- :func:`components.deidentify.dicom.policy.parse_dicom_policy`: the ``dicom:`` policy section.
- :func:`components.deidentify.dicom.writer.write_part10`: the raw-copying Part 10 writer it uses.
"""
