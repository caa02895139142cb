"""autotransfer.surface."""
