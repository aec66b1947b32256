"""Measurement: llama-bench-style speed, memory and fit on CPUs."""
