"""edge-moa: a distributed Mixture-of-Agents of small LLMs on edge boards, over MQTT."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
