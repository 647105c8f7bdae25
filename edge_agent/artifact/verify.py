"""Whether a built model directory is what its manifest says: every file's sha256, nothing missing or extra."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import Manifest

MANIFEST_NAME = "manifest.json"  # the one file a manifest does not list


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(model_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under `model_dir` except the manifest itself."""
    return {
        path.relative_to(model_dir).as_posix(): sha256_file(path)
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def check_hashes(model_dir: Path, manifest: Manifest) -> list[str]:
    """Problems found (missing, changed or unlisted files); empty when the directory matches its manifest."""
    model_dir = Path(model_dir)
    problems = []
    actual = hash_files(model_dir)
    for name, expected in sorted(manifest.files.items()):
        if name not in actual:
            problems.append(f"{name}: missing")
        elif actual[name] != expected:
            problems.append(f"{name}: sha256 {actual[name][:12]}... expected {expected[:12]}...")
    for name in sorted(set(actual) - set(manifest.files)):
        problems.append(f"{name}: not in the manifest")
    return problems
