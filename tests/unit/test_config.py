"""Config errors name the key path, the value and what is wrong."""

import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError


def test_minimal_config_fills_defaults():
    config = parse_config({"agent": {"device_id": "board-1"}})
    assert config.moa.layers == 1 and config.mqtt.topic_root == "moa/v1" and config.engine.kind == "onnx"


@pytest.mark.parametrize("data,path,fragment", [
    ({"agent": {"device_id": "bad id"}}, "agent.device_id", "must match"),
    ({"agent": {"device_id": "a"}, "mqtt": {"port": 70000}}, "mqtt.port", "less than or equal"),
    ({"agent": {"device_id": "a"}, "moa": {"layers": 5}}, "moa", "max_layers"),
    ({"agent": {"device_id": "a"}, "engine": {"kind": "gpu"}}, "engine.kind", "'onnx' or 'synthetic'"),
    ({"agent": {"device_id": "a"}, "queue": {"colour": 1}}, "queue.colour", "unknown key"),
    ({}, "agent", "Field required"),
])
def test_errors_report_key_path(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = [p for p, _, _ in info.value.problems]
    messages = " ".join(m for _, _, m in info.value.problems)
    assert path in paths and fragment in messages


@pytest.mark.parametrize("sections,path", [
    ({"mqtt": {"password_file": "pw"}}, "mqtt.password_file"),
    ({"mqtt": {"tls_cert_file": "c.crt"}}, "mqtt.tls_cert_file"),
    ({"mqtt": {"tls_cert_file": "c.crt", "tls_key_file": "c.key"}}, "mqtt.tls_cert_file"),  # no CA: plaintext
    ({"agent": {"device_id": "a", "heartbeat_s": 5.0, "peer_timeout_s": 6.0}}, "agent.peer_timeout_s"),
    ({"moa": {"ack_timeout_s": 30.0, "request_timeout_s": 20.0}}, "moa.ack_timeout_s"),
])
def test_fields_that_do_not_fit_together_are_reported_by_key_path(sections, path):
    data = {"agent": {"device_id": "a"}, **sections}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert path in [p[0] for p in info.value.problems]


def test_config_check_opens_credential_files_and_resolves_the_model(tmp_path):
    from edge_agent.config import check_resources

    config = parse_config({"agent": {"device_id": "a"}, "mqtt": {"username": "a", "password_file": "missing"},
                           "engine": {"model": str(tmp_path / "not-a-model")}}, base_dir=tmp_path)
    problems = {p[0]: p[2] for p in check_resources(config)}
    assert problems["mqtt.password_file"].startswith("cannot read")
    assert "not a built model directory" in problems["engine.model"]


@pytest.mark.parametrize("model,expected", [
    ("models/tiny", "{base}/models/tiny"),  # a path (artifact.store.looks_like_path): taken from the file's folder
    ("./tiny", "{base}/tiny"),
    ("/opt/models/tiny", "/opt/models/tiny"),
    ("smollm2-135m-instruct", "smollm2-135m-instruct"),  # a catalogue name stays a name
])
def test_a_relative_model_path_is_taken_from_the_config_folder(tmp_path, model, expected):
    config = parse_config({"agent": {"device_id": "a"}, "engine": {"model": model}}, base_dir=tmp_path)
    assert config.engine.model == expected.format(base=tmp_path)


def test_a_home_relative_model_path_is_not_put_under_the_config_folder(tmp_path):
    from pathlib import Path

    config = parse_config({"agent": {"device_id": "a"}, "engine": {"model": "~/models/x"}}, base_dir=tmp_path)
    assert config.engine.model == str(Path("~/models/x").expanduser())


def test_aggregation_settings_default_to_the_paper_and_are_validated(tmp_path):
    from edge_agent.config import check_resources

    moa = parse_config({"agent": {"device_id": "a"}}).moa
    assert (moa.aggregation, moa.select_ranker, moa.reference_max_chars) == ("synthesize", "pointwise", 4000)
    with pytest.raises(ConfigError) as err:
        parse_config({"agent": {"device_id": "a"}, "moa": {"aggregation": "vote", "reference_max_chars": -1}})
    assert {p[0] for p in err.value.problems} == {"moa.aggregation", "moa.reference_max_chars"}
    config = parse_config({"agent": {"device_id": "a"}, "moa": {"pairwise_template_file": "clf.txt"},
                           "engine": {"kind": "synthetic"}}, base_dir=tmp_path)
    assert config.moa.pairwise_template_file == tmp_path / "clf.txt"
    assert [p[0] for p in check_resources(config)] == ["moa.pairwise_template_file"]
