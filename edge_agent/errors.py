"""The project's exception tree; third-party exceptions are mapped to these at each boundary.

    EdgeMoaError
    ├── ConfigError         bad configuration or arguments: carries (key path, value, message) per problem
    ├── ProtocolError       bad bytes from the network: carries the error code for the reply
    ├── TransportError      the broker could not be reached or refused us
    ├── Refusal             a prompt not accepted (queue_full, too_large, unavailable, ...): carries its route
    ├── InferenceError      the engine failed on a request
    │   ├── TooLargeError   prompt plus generation budget exceed the model's context
    │   └── IncompatibleModelError  the built model cannot run exactly here: rebuild it (exit 78, not restarted)
    ├── ModelBuildError     a model could not be fetched, converted, exported or verified
    └── PeerTimeoutError    an answer (or a peer's) did not come by its deadline

Commands exit 0 on success, 1 when they fail with one of these (the message says what to do), 2 on a usage error
(argparse), 130 when interrupted; the agent daemon exits 78 (EX_CONFIG) on a configuration or model it refuses,
which its systemd unit does not restart (RestartPreventExitStatus).
"""

from __future__ import annotations


class EdgeMoaError(Exception):
    """Base of every error edge-moa raises on purpose."""

    code = "internal"


class ConfigError(EdgeMoaError):
    code = "invalid_config"

    def __init__(self, problems: list[tuple[str, object, str]]):
        self.problems = problems
        lines = [f"{path} = {value!r}: {message}" for path, value, message in problems]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class ProtocolError(EdgeMoaError):
    def __init__(self, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.code = code


class TransportError(EdgeMoaError):
    code = "transport"

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable  # False when the broker refused us (credentials, ACL): retrying cannot help


class Refusal(EdgeMoaError):
    """A prompt refused once its reply route is known: the error goes there (docs/protocol.md, Error)."""

    def __init__(self, route, code: str, message: str):
        super().__init__(message)
        self.route, self.code, self.message = route, code, message


class InferenceError(EdgeMoaError):
    code = "inference_failed"


class TooLargeError(InferenceError):
    code = "too_large"


class IncompatibleModelError(InferenceError):
    """The model was built for another onnxruntime or CPU and its fast path does not apply here. Restarting
    cannot help: the process exits with 78 (EX_CONFIG, sysexits.h), which the systemd unit lists in
    RestartPreventExitStatus so that the board does not crash-loop."""

    code = "incompatible_model"
    exit_code = 78


class ModelBuildError(EdgeMoaError):
    code = "model_build_failed"


class PeerTimeoutError(EdgeMoaError):
    code = "timeout"
