"""Network clients: one OpenAI-protocol client (retries, Retry-After, errors, redaction) and the chat model
built on it."""
