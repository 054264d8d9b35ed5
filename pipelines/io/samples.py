"""What a source yields: :class:`Sample` descriptors, :class:`SourceError`, and the input file types.

Both source modules (:mod:`pipelines.io.sources`, :mod:`pipelines.io.smpl_sources`) build on this one,
so that neither imports the other's user.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
"""Image files (lower-case; matched case-insensitively)."""
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Video files (lower-case; matched case-insensitively)."""
SMPL_SOURCE_EXTENSIONS = (".tar", ".npz")
"""SMPL-labelled input files (:func:`pipelines.io.smpl_sources.smpl_source_samples`)."""


class SourceError(ValueError):
    """An input cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class Sample:
    """One image or video frame to annotate (no pixels: those are loaded by
    :func:`pipelines.io.sources.load_batch`)."""

    sample_key: str
    """Stable relative key (see :mod:`pipelines.io.sources`)."""
    source: str
    """Where it came from: the file path as reached from the input given (plus ``#f<frame>`` for video)."""
    uri: str
    """Path or fsspec URL the loader reads."""
    kind: str = "image"
    """``image``, ``video``, or ``fault`` (a file that cannot be used, see :func:`fault_sample`)."""
    track_id: str = ""
    """Video key for frames, ``""`` for stills."""
    frame_index: int = -1
    """Frame number within the video, -1 for stills."""
    labels: str = ""
    """Label boxes as JSON ``[[x0, y0, x1, y1], ...]`` (image px); ``""``: the source has no labels."""
    error_reason: str = ""
    """Non-empty when the sample's labels are unusable (it goes to quarantine at stage ``source``)."""


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes (the OS hands them over as lone surrogates)
    are shown escaped (``\\udcff``); any other text is returned as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fault_sample(key: str, source: str, reason: str) -> Sample:
    """A sample that cannot be annotated (a broken file, frame or label file): it goes to the quarantine table
    with ``error_stage = "source"`` and ``reason``, and is never read."""
    return Sample(sample_key=printable(key), source=printable(source), uri="", kind="fault", error_reason=reason)
