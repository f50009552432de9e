"""One module per command line command (see moyu_core/__main__.py)."""
