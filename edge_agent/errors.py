"""The project's exception tree; third-party exceptions are mapped to these at each boundary.

    EdgeMoaError
    ├── ConfigError         bad configuration: carries the key path and the value
    ├── ProtocolError       bad bytes from the network: carries the error code for the reply
    ├── TransportError      the broker could not be reached or refused us
    ├── QueueFullError      admission refused: the memory-aware cap is reached
    ├── InferenceError      the engine failed
    │   ├── TooLargeError   prompt plus generation budget exceed the model's context
    │   └── IncompatibleModelError  the built model cannot run exactly here: rebuild it (exit 78, not restarted)
    └── PeerTimeoutError    a peer (or the whole request) missed its deadline
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


class QueueFullError(EdgeMoaError):
    code = "queue_full"


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


class PeerTimeoutError(EdgeMoaError):
    code = "timeout"
