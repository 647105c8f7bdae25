"""The built-model format: manifest, chat template, file store and verification, read by engine/ and model/."""
