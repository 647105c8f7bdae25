"""`model build` skips a model already built by the current pipeline and rebuilds one from an older pipeline."""

from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.artifact.manifest import read_manifest, write_manifest
from edge_agent.model import build, fetch
from edge_agent.model.tiny import build_tiny_model


class _FetchReached(Exception):
    pass


def _no_download(*_args, **_kwargs):
    raise _FetchReached


def test_current_build_is_kept_and_an_older_one_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fetch, "fetch_gguf", _no_download)  # where a rebuild starts: no 100 MB download here
    out = build_tiny_model(tmp_path / "built")
    write_manifest(out, replace(read_manifest(out), pipeline=build.PIPELINE - 1))
    with pytest.raises(_FetchReached):
        build.build_model("smollm2-135m-instruct", out_dir=out, work_dir=tmp_path / "work")

    write_manifest(out, replace(read_manifest(out), pipeline=build.PIPELINE))
    assert build.build_model("smollm2-135m-instruct", out_dir=out, work_dir=tmp_path / "work") == out
