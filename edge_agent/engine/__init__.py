"""Inference engines: the real ONNX one and a synthetic one for load tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ChatMessage, Engine, Generation, GenerationRequest

if TYPE_CHECKING:  # the engine itself does not need pydantic (engine-only processes stay smaller)
    from ..config import EngineSection

__all__ = ["ChatMessage", "Engine", "Generation", "GenerationRequest", "create_engine"]


def create_engine(section: EngineSection) -> Engine:
    """Build the configured engine (loading is slow: do it before connecting to the broker)."""
    if section.kind == "synthetic":
        from .batch_profile import BatchProfile
        from .synthetic import SyntheticEngine

        profile = (
            BatchProfile.read(section.synthetic_batch_profile) if section.synthetic_batch_profile else None
        )
        return SyntheticEngine(
            service_s=section.synthetic_service_s,
            distribution=section.synthetic_distribution,
            seed=section.seed,
            kv_bytes_per_token=section.synthetic_kv_bytes_per_token,
            max_batch=section.max_batch,
            batch_cost=section.synthetic_batch_cost,
            batch_profile=profile,
        )
    from ..artifact.store import resolve_model_dir
    from .onnx import OnnxEngine

    return OnnxEngine(
        resolve_model_dir(section.model),
        threads=section.threads,
        seed=section.seed,
        max_batch=section.max_batch,
        huge_pages=section.huge_pages,
        prefix_cache_bytes=section.prefix_cache_mb << 20,
    )
