"""autotransfer.data."""
