"""autotransfer.report."""
