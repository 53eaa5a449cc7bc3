"""Where content-addressed artifacts live: `artifact_dir/<sha256>.<ext>`, never a user path."""

from __future__ import annotations

import re
from pathlib import Path

#: Artifact format -> file extension.
ARTIFACT_FORMATS: dict[str, str] = {"onnx": "onnx", "torchscript": "pt"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def artifact_path(artifact_dir: Path, sha256: str, format: str) -> Path:
    """The file of the artifact with this hash and format; ValueError for anything else."""
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    if format not in ARTIFACT_FORMATS:
        raise ValueError(
            f"The value of `format` is {format!r}, but must be one of "
            f"{', '.join(repr(f) for f in ARTIFACT_FORMATS)}."
        )
    return artifact_dir / f"{sha256}.{ARTIFACT_FORMATS[format]}"


def find_artifact(artifact_dir: Path, sha256: str) -> Path | None:
    """The stored file of the artifact with this hash, in whichever format it was exported."""
    for format in ARTIFACT_FORMATS:
        path = artifact_path(artifact_dir, sha256, format)
        if path.is_file():
            return path
    return None
