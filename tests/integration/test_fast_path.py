"""A tuned build on load: its minimums are written, then its logits checked; a mismatch or a foreign machine without
a reference is refused with IncompatibleModelError (exit 78, which systemd does not restart)."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from edge_agent.artifact.manifest import REFERENCE_LOGITS_FILE, read_manifest
from edge_agent.artifact.reference import ReferenceLogits
from edge_agent.artifact.verify import MANIFEST_NAME
from edge_agent.cli import main
from edge_agent.engine.embeddings import MappedEmbeddings
from edge_agent.engine.fast_path import prefix_logits
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.engine.session import Graph, create_session
from edge_agent.errors import IncompatibleModelError


def tuned_copy(default_model_dir: Path, tmp_path: Path, reference: ReferenceLogits | None, **fields) -> Path:
    """The default model's files linked into a new directory, with its own manifest (and reference)."""
    manifest = read_manifest(default_model_dir)
    if not manifest.block_offsets:
        pytest.skip("the default model here is a portable build")
    out = tmp_path / "tuned"
    out.mkdir(parents=True)
    for name in os.listdir(default_model_dir):
        if name not in (MANIFEST_NAME, REFERENCE_LOGITS_FILE):
            (out / name).symlink_to(default_model_dir / name)
    fields["reference_logits"] = ""
    if reference is not None:
        reference.write(out / REFERENCE_LOGITS_FILE)
        fields["reference_logits"] = REFERENCE_LOGITS_FILE
    (out / MANIFEST_NAME).write_text(dataclasses.replace(manifest, **fields).to_json())
    return out


def reference_from(engine_or_graph, ids: np.ndarray) -> ReferenceLogits:
    graph = engine_or_graph._graph if isinstance(engine_or_graph, OnnxEngine) else engine_or_graph
    lengths = np.array([8, 16, 24, len(ids)])
    return ReferenceLogits(ids, lengths, prefix_logits(graph, 3, 64, ids, lengths))


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return ReferenceLogits.fixed_ids(49152)


def test_a_matching_reference_loads_and_a_wrong_patch_is_refused(
    default_model_dir: Path, tmp_path: Path, ids
):
    patched = OnnxEngine(default_model_dir, threads=2)
    good = tuned_copy(default_model_dir, tmp_path / "good", reference_from(patched, ids))
    assert OnnxEngine(good, threads=2).fast_path_kl < 1e-6

    manifest = read_manifest(
        default_model_dir
    )  # what the graph gives without the minimums: a patch gone wrong
    session = create_session(default_model_dir / manifest.graph, 2)
    unpatched = Graph(session, 30, MappedEmbeddings(default_model_dir, manifest.embeddings).rows)
    bad = tuned_copy(default_model_dir, tmp_path / "bad", reference_from(unpatched, ids))
    with pytest.raises(IncompatibleModelError, match="logits differ from the portable graph's"):
        OnnxEngine(bad, threads=2)


def test_a_foreign_machine_without_a_reference_is_refused_with_exit_78(
    default_model_dir: Path, tmp_path: Path, capsys
):
    foreign = tuned_copy(
        default_model_dir, tmp_path, None, onnxruntime="1.18.0", cpu_features=("x86_64", "avx2")
    )
    with pytest.raises(IncompatibleModelError, match="tuned on another machine.*--portable") as refused:
        OnnxEngine(foreign, threads=1)
    assert refused.value.exit_code == 78
    assert main(["model", "verify", str(foreign)]) in (1, 78)  # verify reports it as a problem
