"""LSP features: each module turns protocol messages into work for the pipeline."""
