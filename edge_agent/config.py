"""Typed agent configuration read from TOML; every field described, every error reported with its key path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .artifact.store import looks_like_path, resolve_model_dir
from .errors import ConfigError

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SYSTEMD_CREDENTIALS = "/run/credentials/"
M = TypeVar("M", bound=BaseModel)
DEFAULT_MODEL = "smollm2-135m-instruct"

# Wang et al. (2024), quoted in the paper (Sec. II) and used by its code.
SYNTHESIS_SYSTEM_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically "
    "evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. "
    "Your response should not simply replicate the given answers but should offer a refined, accurate, and "
    "comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability. Do not add any additional comments about how you created these "
    "responses. Just synthesize these responses as instructed."
)


Aggregation = Literal["synthesize", "select"]  # what the origin does with the last layer's answers
SelectRanker = Literal["pointwise", "pairwise"]  # how `select` ranks them (edge_agent/ranking/select.py)
REFERENCE_MAX_CHARS = 4000  # never cuts a 256-token answer (~1,000-1,500 chars), keeps 3 references in 4k tokens


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(Section):
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="This agent's id, unique in the mesh.")
    state_dir: Path = Field(Path("./state"), description="Where the journal (sqlite) lives.")
    heartbeat_s: float = Field(2.0, gt=0, description="Seconds between retained status messages (up to "
                                                     "heartbeat_scale_from agents; past that see below).")
    heartbeat_scale_from: int = Field(16, ge=1, description=(
        "Past this many agents the status interval grows in proportion to the mesh: heartbeat_s x n / this, so "
        "the statuses every agent decodes stay ~ this many per heartbeat_s instead of n (n^2 in the mesh). The "
        "interval is advertised in the status (heartbeat_s); peers wait 3 such intervals before they call an "
        "agent gone, and its MQTT will still reports a death at once."))
    peer_timeout_s: float = Field(10.0, gt=0, description="A peer not heard from for this long is not alive.")
    answers_retention_s: float = Field(3600.0, ge=0, description="How long a finished answer is kept, so a "
                                                                 "repeated request id gets it again.")
    answers_kept: int = Field(10000, ge=0, description="At most this many finished answers are kept.")


class MqttSection(Section):
    host: str = Field("127.0.0.1", description="The board's own broker.")
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["v5", "v311"] = Field("v5", description="MQTT version; v311 for brokers such as amqtt.")
    topic_root: str = Field("moa/v1", pattern=r"^[^#+]+$", description="Prefix of every edge-moa topic.")
    keepalive_s: int = Field(15, ge=5, description="MQTT keepalive; the will fires after 1.5x this.")
    qos: Literal[0, 1] = Field(1, description="QoS of agent-to-agent messages and answers.")
    username: str | None = Field(None, description="Broker user name (the device id when provisioned).")
    password_file: Path | None = Field(None, description="File holding the broker password (systemd credential).")
    tls_ca_file: Path | None = Field(None, description="CA certificate; setting it turns TLS on.")
    tls_cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    tls_key_file: Path | None = Field(None, description="Client key for mutual TLS.")
    reconnect_max_s: float = Field(10.0, gt=0, description="Upper bound of the reconnect back-off.")


class MoaSection(Section):
    layers: int = Field(1, ge=0, description="Default M: MoA layers per prompt.")
    proposers: int = Field(2, ge=0, description="Default k: extra proposers (peers) per layer.")
    max_layers: int = Field(3, ge=0, description="Largest M a request may ask for.")
    max_proposers: int = Field(4, ge=0, description="Largest k a request may ask for.")
    max_new_tokens: int = Field(128, ge=1, description="Default generation budget per inference.")
    max_new_tokens_limit: int = Field(512, ge=1, description="Largest max_new_tokens a request may ask for.")
    temperature: float = Field(0.7, ge=0, le=2, description="Default sampling temperature (0 = greedy).")
    system_prompt: str = Field(SYNTHESIS_SYSTEM_PROMPT, min_length=1, description="Synthesis system prompt.")
    ack_timeout_s: float = Field(3.0, gt=0, description="A peer that does not acknowledge a task in time is skipped.")
    task_grace_s: float = Field(15.0, gt=0, description="Slack added to a peer's own estimate of its finish time.")
    request_timeout_s: float = Field(900.0, gt=0, description="A prompt not answered by then gets a timeout error.")
    max_redispatch: int = Field(2, ge=0, description="How often one proposer slot may move to another peer.")
    peer_policy: Literal["uniform", "speed-aware"] = Field(
        "uniform", description="uniform: k peers at random (the paper). speed-aware: the k of lowest expected "
                               "wait, (queue + 1) x alpha, among peer_candidates drawn at random.")
    peer_candidates: int = Field(3, ge=1, description="speed-aware: how many peers to draw before keeping k (d).")
    aggregation: Aggregation = Field(
        "synthesize", description="synthesize: the origin writes a new answer from the last layer's (the paper). "
                                  "select: it returns the best of them verbatim, ranked by its model's next-token "
                                  "probabilities (no generation; docs/quality.md, Aggregation strategies).")
    select_ranker: SelectRanker = Field(
        "pointwise", description="select: pointwise = each proposal rated 1-9 alone (expected digit); pairwise = "
                                 "a knockout with AlpacaEval's judge template, each pair in both orders.")
    reference_max_chars: int = Field(
        REFERENCE_MAX_CHARS, ge=0, description="Each previous answer quoted in a synthesis or layer >= 2 prompt "
                                               "(and shown to the select ranker) is cut at a word boundary to this "
                                               "many characters, with an ellipsis (0 = no cap).")
    pairwise_template_file: Path | None = Field(
        None, description="select_ranker = pairwise: AlpacaEval's alpaca_eval_clf.txt; unset = the copy "
                          "`edge-moa eval`/`judge` extracted under ~/.cache/edge-moa/alpaca_eval.")

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> MoaSection:
        if self.layers > self.max_layers:
            raise ValueError(f"layers ({self.layers}) must not exceed max_layers ({self.max_layers})")
        if self.proposers > self.max_proposers:
            raise ValueError(f"proposers ({self.proposers}) must not exceed max_proposers ({self.max_proposers})")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("max_new_tokens must not exceed max_new_tokens_limit")
        return self


class LimitsSection(Section):
    max_payload_bytes: int = Field(65536, ge=256, description="Larger MQTT payloads are refused at the edge.")
    max_prompt_chars: int = Field(8000, ge=1, description="Longer prompts are refused with invalid_request.")


class QueueSection(Section):
    memory_fraction: float = Field(0.5, gt=0, le=1, description="Share of free memory the queue may charge.")
    reserve_mb: int = Field(128, ge=0, description="Memory kept free for everything else on the board.")
    memory_limit_mb: int = Field(0, ge=0, description="Hard limit such as systemd MemoryMax (0 = cgroup or none).")
    max_tasks: int = Field(256, ge=1, description="Upper bound on queued tasks whatever the memory says.")


class EngineSection(Section):
    kind: Literal["onnx", "synthetic"] = Field("onnx", description="synthetic is a load-testing tool only.")
    model: str = Field(DEFAULT_MODEL, description="Catalogue name or path of a built model directory.")
    threads: int = Field(0, ge=0, description="Inference threads (0 = all cores).")
    seed: int | None = Field(None, description="Sampling seed, for reproducible runs.")
    warmup: bool = Field(True, description="Run one short inference before going live.")
    max_batch: int = Field(4, ge=1, le=16, description="Up to this many tasks decode together; a task joins "
                                                        "the running batch at its next step (1 = off: the "
                                                        "paper's FCFS, which every Theorem 1 reproduction sets). "
                                                        "4: the best measured on 1-2 threads for the default "
                                                        "model (docs/stability.md 6e).")
    hang_timeout_s: float = Field(300.0, gt=0, description="An inference running longer than this means the engine "
                                                            "hangs: the status says unhealthy, new work is refused.")
    prefix_cache_mb: int = Field(32, ge=0, le=4096, description="KV of prompt starts seen twice, kept for the "
                                                                "next prompt that starts so (the synthesis "
                                                                "system prompt, a ranking's template): exact, "
                                                                "skips their prefill (0 = off).")
    huge_pages: bool = Field(True, description="Put the model's weights on transparent huge pages (Linux): "
                                               "20-30 % faster decode for 10 MB of memory.")
    synthetic_service_s: float = Field(1.0, gt=0, description="synthetic: mean service time in seconds.")
    synthetic_distribution: Literal["deterministic", "exponential"] = Field("deterministic")
    synthetic_kv_bytes_per_token: int = Field(4096, ge=0, description="synthetic: memory charged per token.")
    synthetic_batch_cost: float = Field(0.25, ge=0, le=1, description="synthetic: a batch of b takes "
                                                                      "service x (1 + cost x (b-1)).")
    synthetic_batch_profile: str = Field("", description="synthetic: a batch profile JSON (tools/bench/"
                                                         "batching.py --out) to take step costs from instead.")


class MetricsSection(Section):
    enabled: bool = Field(False, description="Serve Prometheus metrics (edgemoa_*, docs/ecosystem.md).")
    host: str = Field("127.0.0.1", min_length=1, description="Listen address of the /metrics endpoint "
                                                             "(0.0.0.0 to let a Prometheus elsewhere scrape it).")
    port: int = Field(9464, ge=0, le=65535, description="Port of the /metrics endpoint (0 = any free port).")


class HomeAssistantSection(Section):
    enabled: bool = Field(False, description="Publish a Home Assistant MQTT discovery config (retained).")
    prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
                        description="Home Assistant's discovery prefix (its MQTT integration setting).")


class AgentConfig(Section):
    agent: AgentSection
    mqtt: MqttSection = MqttSection()
    moa: MoaSection = MoaSection()
    limits: LimitsSection = LimitsSection()
    queue: QueueSection = QueueSection()
    engine: EngineSection = EngineSection()
    metrics: MetricsSection = MetricsSection()
    home_assistant: HomeAssistantSection = HomeAssistantSection()


def parse_config(data: dict, base_dir: Path | None = None) -> AgentConfig:
    """Validate a config mapping; relative paths are taken relative to `base_dir` (the file's folder)."""
    config = validate_toml_model(AgentConfig, data)
    problems = cross_field_problems(config)
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(config, base_dir) if base_dir else config


def cross_field_problems(config: AgentConfig) -> list[tuple[str, object, str]]:
    """Fields that are each valid but do not fit together, as (key path, value, message)."""
    problems = []
    mqtt, agent, moa = config.mqtt, config.agent, config.moa
    if mqtt.password_file is not None and not mqtt.username:
        problems.append(("mqtt.password_file", str(mqtt.password_file), "set, but mqtt.username is not"))
    if (mqtt.tls_cert_file is None) != (mqtt.tls_key_file is None):
        which = "tls_cert_file" if mqtt.tls_cert_file is not None else "tls_key_file"
        problems.append((f"mqtt.{which}", str(getattr(mqtt, which)),
                         "mutual TLS needs both mqtt.tls_cert_file and mqtt.tls_key_file"))
    if mqtt.tls_cert_file is not None and mqtt.tls_ca_file is None:
        # without a CA the client would not turn TLS on: a client certificate must never mean plaintext
        problems.append(("mqtt.tls_cert_file", str(mqtt.tls_cert_file),
                         "set, but mqtt.tls_ca_file is not: TLS needs the CA (without it the link is plaintext)"))
    if agent.peer_timeout_s < 2 * agent.heartbeat_s:
        problems.append(("agent.peer_timeout_s", agent.peer_timeout_s,
                         (f"must be at least twice agent.heartbeat_s ({agent.heartbeat_s}), or live peers look "
                          "gone between their statuses")))
    if moa.ack_timeout_s >= moa.request_timeout_s:
        problems.append(("moa.ack_timeout_s", moa.ack_timeout_s,
                         f"must be shorter than moa.request_timeout_s ({moa.request_timeout_s})"))
    return problems


def check_resources(config: AgentConfig) -> list[tuple[str, object, str]]:
    """What `config check` adds to validation: the credential files open, and the model resolves."""
    problems = []
    for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(config.mqtt, name)
        if path is None or (str(path).startswith(SYSTEMD_CREDENTIALS) and not os.environ.get("CREDENTIALS_DIRECTORY")):
            continue  # a systemd credential exists only inside its unit (LoadCredential): the agent checks it at start
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            problems.append((f"mqtt.{name}", str(path), f"cannot read: {exc.strerror}"))
    template = config.moa.pairwise_template_file
    if template is not None:
        try:
            template.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(("moa.pairwise_template_file", str(template), f"cannot read: {exc.strerror}"))
    if config.engine.kind == "onnx":
        try:
            resolve_model_dir(config.engine.model)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


def load_config(path: str | Path) -> AgentConfig:
    return parse_config(read_toml(path), base_dir=Path(path).parent)


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict, or a ConfigError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([(str(path), None, f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), None, f"not valid TOML: {exc}")]) from None


def validate_toml_model(model: type[M], data: dict) -> M:
    """Validate with pydantic; every problem reported as (key path, value, message)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_problem(err, data) for err in exc.errors()]) from None


def _problem(err: dict, data: dict) -> tuple[str, object, str]:
    loc = [str(part) for part in err["loc"]]
    value: object = data
    for part in loc:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "string_pattern_mismatch":
        message = f"must match {err['ctx']['pattern']}"
    return (".".join(loc) or "(top)", value, message)


def _resolve_paths(config: AgentConfig, base_dir: Path) -> AgentConfig:
    def fix(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base_dir / path)

    agent = config.agent.model_copy(update={"state_dir": fix(config.agent.state_dir)})
    moa = config.moa
    if moa.pairwise_template_file is not None:
        moa = moa.model_copy(update={"pairwise_template_file": fix(moa.pairwise_template_file)})
    mqtt_updates = {
        name: fix(getattr(config.mqtt, name))
        for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
        if getattr(config.mqtt, name) is not None
    }
    engine = config.engine
    if looks_like_path(engine.model):
        model = Path(engine.model).expanduser()  # `~/models/x` is the user's home, not the config folder's
        engine = engine.model_copy(update={"model": str(model if model.is_absolute() else base_dir / model)})
    return config.model_copy(
        update={"agent": agent, "mqtt": config.mqtt.model_copy(update=mqtt_updates), "engine": engine, "moa": moa}
    )
