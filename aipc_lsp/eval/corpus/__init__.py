"""The eval's corpus of code with tests (read as text by aipc_lsp.eval.tasks, never imported here).

Each `<name>.py` is a small self-contained module of everyday code; `<name>_checks.py` holds its
test functions (`test_*`, plain asserts) and imports it as a top-level module, so a copy of the two
in a temporary folder runs them (scoring.run_checks). `money.py`, `geometry.py` and `schema.py` are
helpers that `invoice.py`, `layout.py` and `importer.py` import: a line of those that calls a helper
is a task that needs the other file.
"""
