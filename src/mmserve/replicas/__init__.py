"""Replicas: one running copy of a model each, behind one protocol (`replicas.base.Replica`).

Kinds: `process` (a worker child), `inprocess` (a vision model in this process), `remote` (an
upstream over HTTP), `server` (an upstream program mmserve starts, relays to and stops). Below
the engine: nothing here imports `mmserve.engine`.
"""
