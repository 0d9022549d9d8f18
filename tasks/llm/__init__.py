"""The LLM gateway, its circuit breaker, JSON parsing, prompt templates."""
