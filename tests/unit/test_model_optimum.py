"""The optimum exporter's pure parts: the config transformers 4 reads, the graph I/O the engine runs, the
interpreter it is run by."""

import json
from pathlib import Path

import pytest

from edge_agent.artifact.manifest import KvGeometry
from edge_agent.errors import ModelBuildError
from edge_agent.model import optimum
from edge_agent.model.decoder_io import decoder_io_problems
from edge_agent.model.legacy_config import legacy_config, legacy_view
from edge_agent.model.optimum_check import checkpoint_geometry

KV = KvGeometry(num_layers=2, num_kv_heads=2, head_dim=16)


def _optimum_io(kv: KvGeometry = KV):
    """The names and shapes optimum-onnx 0.1 gives a Llama decoder with past (read off the tiny checkpoint's)."""
    inputs = {
        "input_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", "past_sequence_length + sequence_length"],
        "position_ids": ["batch_size", "sequence_length"],
    }
    outputs = {"logits": ["batch_size", "sequence_length", 512]}
    for i in range(kv.num_layers):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{i}.{kind}"] = ["batch_size", 2, "past_sequence_length", 16]
            outputs[f"present.{i}.{kind}"] = ["batch_size", 2, "past_sequence_length + sequence_length", 16]
    return inputs, outputs


def test_an_optimum_llama_decoder_is_what_the_engine_runs():
    assert decoder_io_problems(*_optimum_io(), KV) == []


def test_other_cache_layouts_are_refused_with_what_differs():
    inputs, outputs = _optimum_io()
    inputs["past_key_values.1.key"] = ["batch_size*2", 16, "past_sequence_length"]  # Bloom-like
    del outputs["present.0.value"]
    inputs["use_cache_branch"] = [1]
    problems = decoder_io_problems(inputs, outputs, KV)
    assert problems == [
        "no output 'present.0.value'",
        "past_key_values.1.key is shaped ['batch_size*2', 16, 'past_sequence_length'], not (batch, 2, past, 16)",
        "an input the engine does not feed: 'use_cache_branch'",
    ]
    assert "no input 'past_key_values.2.key'" in decoder_io_problems(*_optimum_io(), KvGeometry(3, 2, 16))


def test_transformers_5_rope_parameters_become_the_keys_transformers_4_reads():
    flat = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "dtype": "float32"}
    assert legacy_config(flat) == {**flat, "rope_theta": 100000.0, "torch_dtype": "float32"}

    scaled = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert legacy_config(scaled)["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}

    gemma = {
        "text_config": {
            "rope_parameters": {
                "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
            }
        }
    }
    text = legacy_config(gemma)["text_config"]
    assert (text["rope_theta"], text["rope_local_base_freq"], "rope_scaling" in text) == (1e6, 1e4, False)
    assert legacy_config({"rope_theta": 1e4}) == {"rope_theta": 1e4}  # a 4.x config passes as it is


def test_the_legacy_view_links_the_weights_and_rewrites_the_config(tmp_path: Path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 7.0}}))
    view = legacy_view(checkpoint, tmp_path / "view")
    assert (view / "model.safetensors").is_symlink()
    assert json.loads((view / "config.json").read_text())["rope_theta"] == 7.0
    assert "rope_theta" not in json.loads((checkpoint / "config.json").read_text())


def test_geometry_from_a_checkpoint_config(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "text_config": {
                    "num_attention_heads": 4,
                    "num_hidden_layers": 3,
                    "hidden_size": 64,
                    "max_position_embeddings": 512,
                }
            }
        )
    )
    assert checkpoint_geometry(path) == (KvGeometry(3, 4, 16), 512)


def test_a_missing_optimum_interpreter_says_how_to_install_one(tmp_path: Path, monkeypatch):
    with pytest.raises(ModelBuildError, match="make install-optimum"):
        optimum.optimum_python(tmp_path / "nowhere" / "python")
    monkeypatch.setenv(optimum.PYTHON_ENV, str(tmp_path / "python"))
    (tmp_path / "python").write_text("")
    assert optimum.optimum_python() == tmp_path / "python"
