"""Whether an exported decoder has the inputs and outputs the engine runs (engine/session.py `Graph`).

The engine feeds `input_ids`, `attention_mask` and (if present) `position_ids`, and `past_key_values.N.key/value`
shaped (batch, kv_heads, past, head_dim); it reads `logits` and `present.N.key/value`. optimum-onnx 0.1 exports
Llama-family decoders with exactly these names; architectures with another cache layout (Bloom's fused heads,
GPT-BigCode's joint key_value) are refused here with what differs, rather than failing at the first request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..artifact.manifest import KvGeometry

Shape = Sequence[int | str | None]


def decoder_io_problems(
    inputs: Mapping[str, Shape], outputs: Mapping[str, Shape], kv: KvGeometry
) -> list[str]:
    """What the graph lacks or shapes otherwise, one line each; empty when the engine can run it."""
    problems = [f"no input {name!r}" for name in ("input_ids", "attention_mask") if name not in inputs]
    if "logits" not in outputs:
        problems.append("no output 'logits'")
    for layer in range(kv.num_layers):
        for kind in ("key", "value"):
            past, present = f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}"
            if past not in inputs:
                problems.append(f"no input {past!r}")
            elif not _kv_shaped(inputs[past], kv):
                problems.append(
                    f"{past} is shaped {list(inputs[past])}, not (batch, {kv.num_kv_heads}, past, {kv.head_dim})"
                )
            if present not in outputs:
                problems.append(f"no output {present!r}")
    extra = sorted(set(inputs) - {"input_ids", "attention_mask", "position_ids"} - _pasts(kv))
    problems += [f"an input the engine does not feed: {name!r}" for name in extra]
    return problems


def _kv_shaped(shape: Shape, kv: KvGeometry) -> bool:
    return len(shape) == 4 and shape[1] == kv.num_kv_heads and shape[3] == kv.head_dim


def _pasts(kv: KvGeometry) -> set[str]:
    return {f"past_key_values.{i}.{kind}" for i in range(kv.num_layers) for kind in ("key", "value")}
