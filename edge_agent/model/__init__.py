"""Models: the catalogue, the build pipeline (GGUF -> board-ready ONNX), the manifest and the tiny test model."""
