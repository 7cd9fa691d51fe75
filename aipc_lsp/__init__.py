"""aipc-lsp: local AI code completion and inline chat over the Language Server Protocol."""

__version__ = "0.1.0"
