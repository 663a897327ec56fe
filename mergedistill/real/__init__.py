"""Real pretrained encoders that ship inside pip packages (the ``real`` extra), imported offline."""
