"""autotransfer.estimate."""
