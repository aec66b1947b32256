"""What every layer shares: the user-facing error, llama.cpp log capture, and the GGUF keys we own."""
