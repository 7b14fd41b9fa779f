"""Resolves the Table E.1-1 action for one attribute given the enabled options.

Rules (documented here, applied everywhere, recursively into sequences):

1. **Options.** Start from the Basic Profile action. Every enabled option whose column has an entry for
   the row proposes its action. When enabled options disagree, ``C`` (clean) beats ``K`` (keep): the
   more protective action wins. ``retain_long_full_dates`` and ``retain_long_modified_dates`` are
   mutually exclusive (the policy parser rejects both).
2. **Compound actions** (they depend on the IOD's Type 1/2/3 requirement, which a row does not carry):

   - ``X/Z/U*`` (Referenced Image / Source Image Sequence): ``U``. The sequence is kept and every UID
     in it is remapped, so references stay internally consistent; other attributes inside the items
     are processed by the table like any other.
   - Any compound with ``D`` for an attribute that is Type 1 in a common composite IOD
     (``TYPE1_DUMMY``: Device Serial Number in the Enhanced General Equipment module, Content
     Date/Time in SR and enhanced images, Acquisition DateTime in enhanced multi-frame images): ``D``,
     a non-identifying dummy of the right VR.
   - ``Z/D``, or any compound with ``Z`` for an attribute in ``TYPE2_ZERO``: ``Z`` (zero length).
     Patient ID (``Z/D``) is special-cased by the caller: it receives the keyed patient pseudonym.
   - Otherwise ``X`` (remove): a Type 3 attribute may always be absent.
3. **Attributes not in the table** (PS3.15 lists the attributes to act on; we fail closed): see
   :func:`unlisted_action`.
"""

from __future__ import annotations

from collections.abc import Iterable

from components.deidentify.dicom.table import ProfileRow

TYPE1_DUMMY = frozenset({"DeviceSerialNumber", "ContentDate", "ContentTime", "AcquisitionDateTime"})
TYPE2_ZERO = frozenset({"PatientID", "ContentCreatorName", "ReferencedStudySequence"})

# Unlisted public attributes kept as they are: structural, pixel-description and acquisition-geometry
# attributes (Image Pixel module (0028,xxxx), SOP Common, General Series/Image technique attributes
# that the table marks as not needing action). They are never free text.
SAFE_UNLISTED_KEYWORDS = frozenset(
    {
        "SpecificCharacterSet",
        "SOPClassUID",
        "Modality",
        "ImageType",
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "PhotometricInterpretation",
        "ConversionType",
        "PatientOrientation",
        "BodyPartExamined",
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "MRAcquisitionType",
        "PatientPosition",
        "ViewPosition",
        "Laterality",
        "ImageLaterality",
        "LossyImageCompression",
        "LossyImageCompressionMethod",
        "PresentationIntentType",
        "RescaleType",
        "ConvolutionKernel",
        "FilterType",
        "RotationDirection",
        "ExposureControlMode",
        "PositionReferenceIndicator",
        "AnatomicalOrientationType",
        "BurnedInAnnotation",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "Manufacturer",
        "RecognizableVisualFeatures",
        "PixelPaddingValue",
        "VOILUTFunction",
        "PresentationLUTShape",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
        "CompletionFlag",
        "VerificationFlag",
        "PreliminaryFlag",
        "QualityControlImage",
        "FrameIncrementPointer",
        "TransducerData",
        "ProcessingFunction",
        "RTImageLabel",
        "PrimaryDosimeterUnit",
        "ApprovalStatus",
        "PlanIntent",
        "RTPlanGeometry",
    }
)
# Value representations of unlisted attributes that carry numbers, coded terms or tags, not free text.
SAFE_UNLISTED_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "DS", "IS", "AT", "CS", "US or SS"})
# Value representations that are dates/times: unlisted ones are shifted (or removed under date_mode remove).
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})


def resolve_action(row: ProfileRow, options: Iterable[str], keyword: str) -> str:
    """Returns the single action (``D``, ``Z``, ``X``, ``K``, ``C`` or ``U``) for a table row.

    Args:
        row: The Table E.1-1 row.
        options: The enabled option names.
        keyword: The attribute keyword (used for the Type 1/2 rules of compound actions).

    Returns:
        The resolved action.
    """
    proposed = {row.options[option] for option in options if option in row.options}
    if "C" in proposed:
        action = "C"
    elif "K" in proposed:
        action = "K"
    elif proposed:
        action = sorted(proposed)[0]
    else:
        action = row.basic
    return resolve_compound(action, keyword)


def resolve_compound(action: str, keyword: str) -> str:
    """Resolves a compound action with the rules in the module docstring.

    Args:
        action: An action, possibly compound (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``).
        keyword: The attribute keyword.

    Returns:
        A single action.
    """
    if "/" not in action:
        return action
    parts = set(action.split("/"))
    if "U*" in parts:
        return "U"
    if "D" in parts and keyword in TYPE1_DUMMY:
        return "D"
    if "Z" in parts and (keyword in TYPE2_ZERO or "X" not in parts):
        return "Z"
    return "X"


def unlisted_action(keyword: str, vr: str) -> str:
    """Action for a public attribute the table does not list (fail closed).

    Kept (``K``): keywords in ``SAFE_UNLISTED_KEYWORDS`` and values of numeric/coded VRs
    (``SAFE_UNLISTED_VRS``); sequences are walked (``K`` here; their items are processed
    recursively); dates/times are cleaned (``C``: shifted, or removed under ``date_mode: remove``);
    UIDs are remapped (``U``) unless they are standard well-known UIDs (the caller checks); every other
    value (free text, person names, binary data) is removed (``X``) and counted as ``unlisted_removed``.

    Args:
        keyword: The attribute keyword ('' when pydicom does not know the tag).
        vr: The value representation.

    Returns:
        ``K``, ``C``, ``U`` or ``X``.
    """
    if keyword in SAFE_UNLISTED_KEYWORDS or vr == "SQ":
        return "K"
    if vr == "UI":
        return "U"
    if vr in TEMPORAL_VRS:
        return "C"
    if keyword and vr in SAFE_UNLISTED_VRS:
        return "K"
    return "X"
