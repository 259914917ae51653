"""Protocol servers: HTTP/1.1 and WebSocket termination onto channels."""
