import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from aipc_lsp.config import default_config_path
from aipc_lsp.models.catalogue import SMOLLM2_135M

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-m", "aipc_lsp", "serve"]

# The model every test gets unless it says otherwise: most tests need a model, not a good one, and
# the small one keeps the suite fast. A user settings file of the test session's own says so, in
# $XDG_CONFIG_HOME, which every server a test starts inherits (pytest-lsp fixtures, Neovim, the VS
# Code extension's node tests, `aipc-lsp complete`, the demo). Set at import, before any test module
# copies the environment. Tests of the default model name it ("default") or bring their own settings.
TEST_MODEL = SMOLLM2_135M.name


def _test_settings_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="aipc-test-config-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    (home / "aipc-lsp").mkdir()
    (home / "aipc-lsp" / "settings.toml").write_text(
        f"# Written by tests/conftest.py for the test session.\nmodel = \"{TEST_MODEL}\"\n", encoding="utf-8")
    # Other programs read their user settings from $XDG_CONFIG_HOME too: pip (its index and proxy, which
    # fetching a model needs) and git keep theirs.
    before = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for name in ("pip", "git"):
        if (before / name).exists():
            try:
                (home / name).symlink_to(before / name, target_is_directory=True)
            except OSError:  # Windows without the right to make links: pip's settings there are in %APPDATA%
                pass
    return home


os.environ["XDG_CONFIG_HOME"] = str(_test_settings_home())
assert default_config_path() == Path(os.environ["XDG_CONFIG_HOME"]) / "aipc-lsp" / "settings.toml"


def pytest_report_header(config):
    return [f"aipc-lsp server command: {' '.join(SERVER)}",
            f"aipc-lsp test settings: {default_config_path()} (model = \"{TEST_MODEL}\")"]
