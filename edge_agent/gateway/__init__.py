"""`edge-moa gateway`: an OpenAI-compatible HTTP service and a live mesh page for one board, over MQTT."""
