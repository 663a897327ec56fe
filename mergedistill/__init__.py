"""mergedistill: merge several pretrained teacher masked-LMs into one compact student by distillation."""

__version__ = "0.1.0"
