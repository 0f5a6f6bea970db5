"""The engine: models, replicas and their lifecycle; asyncio and our own types only."""
