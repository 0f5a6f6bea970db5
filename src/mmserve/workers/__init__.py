"""Child processes: the JSON-lines protocol, the child's entry point, the parent's supervisor."""
