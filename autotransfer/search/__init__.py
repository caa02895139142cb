"""autotransfer.search."""
