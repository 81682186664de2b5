"""Ground floor shared by every stage: user errors, crash-safe writes, CLI value types."""
