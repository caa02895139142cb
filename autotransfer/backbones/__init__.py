"""autotransfer.backbones."""
