import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-m", "aipc_lsp", "serve"]


def pytest_report_header(config):
    return [f"aipc-lsp server command: {' '.join(SERVER)}"]
