"""Burned-in PHI: OCR the pixels for text (never trusting ``BurnedInAnnotation`` alone) and mask it.

Detection decodes the pixel data (numpy; pylibjpeg handles JPEG and JPEG 2000), samples up to three
frames (first, middle, last), converts each to 8-bit grayscale (luminance for colour; a 0.5-99.5
percentile window for >8-bit data), upscales small images, binarises (text is usually the brightest
thing, so the image is thresholded high and inverted: dark glyphs on white) and runs tesseract
(sparse-text page segmentation) with a per-image time limit. A word counts as text when it has at
least ``min_chars`` alphanumeric characters and a confidence of at least ``min_confidence``.

Masking blacks out every counted word box (with a margin) on every frame; the caller re-runs the
detection on the masked pixels and only then sets ``BurnedInAnnotation`` to ``NO``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytesseract
from PIL import Image
from pydicom.dataset import Dataset

TESSERACT_CONFIG = "--psm 11 --oem 1"
MIN_OCR_WIDTH = 1000
MARGIN_PIXELS = 4
MAX_FRAMES = 3


class PixelDecodeError(Exception):
    """The pixel data cannot be decoded (unsupported transfer syntax or corrupt data)."""


class OcrTimeoutError(Exception):
    """Tesseract exceeded the per-image time limit."""


@dataclass(frozen=True)
class TextBox:
    """One OCR word box in original pixel coordinates (no text is kept, only its size).

    Attributes:
        left: Left column.
        top: Top row.
        width: Width in pixels.
        height: Height in pixels.
        chars: Number of alphanumeric characters read.
        confidence: Tesseract confidence, 0-100.
    """

    left: int
    top: int
    width: int
    height: int
    chars: int
    confidence: float


@dataclass
class OcrFinding:
    """What OCR found in an image (counts and boxes only; never the text).

    Attributes:
        frames_checked: Number of frames OCRed.
        boxes: Word boxes that count as text.
    """

    frames_checked: int = 0
    boxes: list[TextBox] = field(default_factory=list)

    @property
    def has_text(self) -> bool:
        """Whether any word counted as text."""
        return bool(self.boxes)


def pixel_frames(ds: Dataset) -> np.ndarray:
    """Decodes all frames as ``(frames, rows, columns[, samples])``.

    Args:
        ds: A dataset with pixel data.

    Returns:
        The pixel array with a leading frame axis.

    Raises:
        PixelDecodeError: The pixels cannot be decoded.
    """
    try:
        array = ds.pixel_array
    except Exception as error:  # pydicom raises many types for unsupported or corrupt data
        raise PixelDecodeError(type(error).__name__) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames == 1 and (array.ndim == 2 or (array.ndim == 3 and samples > 1)):
        array = array[np.newaxis, ...]
    return array


def to_gray8(frame: np.ndarray) -> np.ndarray:
    """Converts one frame to 8-bit grayscale, stretched to the full range.

    Args:
        frame: ``(rows, columns)`` or ``(rows, columns, 3)``.

    Returns:
        A ``uint8`` array.
    """
    data = frame.astype(np.float32)
    if data.ndim == 3:
        data = data[..., 0] * 0.299 + data[..., 1] * 0.587 + data[..., 2] * 0.114
    if frame.dtype.itemsize > 1:
        low, high = np.percentile(data, [0.5, 99.5])
    else:
        low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    return (np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _ocr_gray(gray: np.ndarray, min_chars: int, min_confidence: float, timeout: float) -> list[TextBox]:
    rows, columns = gray.shape
    scale = 1
    while columns * scale < MIN_OCR_WIDTH and scale < 4:
        scale += 1
    image = Image.fromarray(gray)
    if scale > 1:
        image = image.resize((columns * scale, rows * scale), Image.Resampling.LANCZOS)
    binary = image.point(lambda value: 0 if value >= 128 else 255)
    try:
        data = pytesseract.image_to_data(
            binary, config=TESSERACT_CONFIG, output_type=pytesseract.Output.DICT, timeout=timeout
        )
    except RuntimeError as error:
        if "timeout" in str(error).lower():
            raise OcrTimeoutError from None
        raise
    boxes = []
    for index, text in enumerate(data["text"]):
        chars = sum(character.isalnum() for character in str(text))
        confidence = float(data["conf"][index])
        if chars >= min_chars and confidence >= min_confidence:
            boxes.append(
                TextBox(
                    left=int(data["left"][index]) // scale,
                    top=int(data["top"][index]) // scale,
                    width=-(-int(data["width"][index]) // scale),
                    height=-(-int(data["height"][index]) // scale),
                    chars=chars,
                    confidence=confidence,
                )
            )
    return boxes


def sampled_frame_indexes(frame_count: int) -> list[int]:
    """First, middle and last frame (deduplicated)."""
    return sorted({0, frame_count // 2, frame_count - 1})[:MAX_FRAMES]


def detect_text(
    frames: np.ndarray, min_chars: int = 3, min_confidence: float = 70.0, timeout: float = 20.0
) -> OcrFinding:
    """OCRs sampled frames for burned-in text.

    Args:
        frames: ``(frames, rows, columns[, samples])`` pixels.
        min_chars: Minimum alphanumeric characters per counted word.
        min_confidence: Minimum tesseract confidence per counted word.
        timeout: Per-frame tesseract time limit in seconds.

    Returns:
        The finding (boxes of all sampled frames).

    Raises:
        OcrTimeoutError: Tesseract ran out of time.
    """
    finding = OcrFinding()
    for index in sampled_frame_indexes(frames.shape[0]):
        finding.boxes.extend(_ocr_gray(to_gray8(frames[index]), min_chars, min_confidence, timeout))
        finding.frames_checked += 1
    return finding


def mask_boxes(frames: np.ndarray, boxes: list[TextBox], margin: int = MARGIN_PIXELS) -> np.ndarray:
    """Blacks out every box (plus a margin) on every frame.

    Args:
        frames: ``(frames, rows, columns[, samples])`` pixels.
        boxes: Boxes in pixel coordinates.
        margin: Extra pixels on each side.

    Returns:
        A masked copy.
    """
    masked = frames.copy()
    rows, columns = masked.shape[1], masked.shape[2]
    for box in boxes:
        top, left = max(0, box.top - margin), max(0, box.left - margin)
        bottom, right = min(rows, box.top + box.height + margin), min(columns, box.left + box.width + margin)
        masked[:, top:bottom, left:right, ...] = 0
    return masked
