"""Helpers shared by the tests: tiny checkpoints and GGUF files, trained models, CLI and server runners."""
