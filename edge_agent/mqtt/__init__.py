"""MQTT: the transport protocol, its paho and in-memory implementations, broker processes, the user-side client."""
