"""Model architectures, safe loaders and the input-space wrapper."""
