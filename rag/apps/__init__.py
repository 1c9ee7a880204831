"""The edges users meet: command line, web UI, MCP server, llama-index adapters, `rag doctor`, feedback."""
