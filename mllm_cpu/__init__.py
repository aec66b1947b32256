"""mllm-cpu: MobileLLM-R1 on CPUs with llama.cpp."""
