"""Workers: run consumers synchronously on messages from the bus."""
