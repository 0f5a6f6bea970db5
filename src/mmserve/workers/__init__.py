"""Child processes: the JSON-lines protocol, the child's entry point, and the parent's supervisor."""
