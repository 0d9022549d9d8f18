"""Store, checkpoints and manifests, settings, the run context."""
