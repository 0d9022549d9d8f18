"""The embedded servers: one process manager, llama-server, the embeddings server."""
