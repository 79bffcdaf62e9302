"""Executing a Policy at serve time: the runtime and the OpenAI-compatible proxy."""
