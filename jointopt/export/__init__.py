"""Writing a tuned Policy for serving stacks (policy file, vLLM, OpenAI presets, DSPy)."""
