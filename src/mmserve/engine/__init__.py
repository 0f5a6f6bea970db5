"""The engine: models by name, the room they share, and each model's lifecycle.

    manager    ModelManager: the registry of models, the room (max_loaded_models, max_memory)
               and eviction; the one way in from the API (generate, embed, see, call, relay,
               status), each leasing a replica by capability
    model      Model: one actor task per model owns its state and replicas (commands handled one
               at a time; a generation number makes stale restarts and timers no-ops)
    scheduler  Admission: slots per replica and the bounded wait queue
    eviction   the pure eviction policy
    status     typed status snapshots (ModelStatus, ServerStatus)
    telemetry  what the engine reports to metrics

Imports point down only: the engine uses `mmserve.replicas` and the leaf modules (types, logs,
errors, registry, config), never the API; nothing below imports the engine.
"""
