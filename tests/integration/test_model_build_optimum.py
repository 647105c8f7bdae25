"""`model build --exporter optimum`: the tiny checkpoint exported by optimum-onnx in its own venv, run by our engine
as PyTorch (transformers 5, in this venv) runs the checkpoint: the same greedy tokens, the same logits."""

from pathlib import Path

import numpy as np
import pytest

from edge_agent.artifact.manifest import read_manifest
from edge_agent.engine.base import ChatMessage
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.errors import ModelBuildError
from edge_agent.model.build import build_model, verify_model
from edge_agent.model.optimum import optimum_python
from edge_agent.model.tiny_checkpoint import build_tiny_checkpoint

pytestmark = pytest.mark.slow
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        optimum_python()
    except ModelBuildError as exc:
        pytest.skip(f"the optimum venv is absent (`make install-optimum` creates it): {exc}")
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path):
    torch = pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    from transformers import AutoModelForCausalLM

    return torch, AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def _build(checkpoint: Path, root: Path, precision: str) -> Path:
    return build_model(
        str(checkpoint),
        precision=precision,
        exporter="optimum",
        out_dir=root / precision,
        work_dir=root / "work",
    )


def _torch_greedy(torch_model, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """PyTorch's greedy continuation, one full forward pass a token, and its logits after every position."""
    torch, model = torch_model
    out = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
        logits = model(torch.tensor([out])).logits[0].numpy()
    return out[len(ids) :], logits


def test_fp32_build_runs_as_the_checkpoint(checkpoint: Path, torch_model, tmp_path: Path):
    built = _build(checkpoint, tmp_path, "fp32")
    manifest = read_manifest(built)
    assert manifest.past_present_share_buffer is False and "optimum-onnx" in manifest.notes
    assert verify_model(built) == []  # hashes, then the engine loads it and answers

    engine = OnnxEngine(built, threads=1)
    assert engine.max_batch == 1  # the copying loop: one request at a time
    ids = engine.prompt_ids((ChatMessage("user", "What is the capital of France?"),))
    ours = engine.generate_ids(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    expected, logits = _torch_greedy(torch_model, ids, NEW_TOKENS)
    assert ours == expected
    assert len(set(ours)) > 3  # a continuation, not one token repeated
    np.testing.assert_allclose(engine.next_token_logits(ids + ours), logits, atol=1e-4, rtol=1e-4)


def test_int4_build_is_quantized_and_close(checkpoint: Path, torch_model, tmp_path: Path):
    import onnx

    built = _build(checkpoint, tmp_path, "int4")
    ops = {node.op_type for node in onnx.load(str(built / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert read_manifest(built).precision == "int4"
    engine = OnnxEngine(built, threads=1)
    ids = engine.prompt_ids((ChatMessage("user", "Why is the sky blue?"),))
    expected, _ = _torch_greedy(torch_model, ids, NEW_TOKENS)
    ours = engine.next_token_logits(ids + expected)
    top1 = np.mean(ours[len(ids) - 1 : -1].argmax(-1) == np.asarray(expected))
    assert top1 >= 0.75, top1
