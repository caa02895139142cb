"""autotransfer.train."""
