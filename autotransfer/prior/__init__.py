"""autotransfer.prior."""
