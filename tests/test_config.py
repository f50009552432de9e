"""Safe defaults of the Streamlit server (.streamlit/config.toml), as Streamlit itself reads them."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_file_values():
    from moyu_core.share.checks import MAX_BUNDLE_MB

    cfg = tomllib.loads(CONFIG.read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["headless"] is True
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["enableCORS"] is True
    assert cfg["server"]["maxUploadSize"] == MAX_BUNDLE_MB <= 200
    assert cfg["client"]["showErrorDetails"] == "none"
    assert cfg["browser"]["gatherUsageStats"] is False


def test_streamlit_accepts_and_applies_the_config():
    """Streamlit 1.67 parses the file from the repo root and ends with these effective values
    (an unknown key or a bad value would be ignored with only a warning)."""
    code = ("from streamlit import config as c\n"
            "c.get_config_options(force_reparse=True)\n"
            "from streamlit.config import ShowErrorDetailsConfigOptions as E\n"
            "keys = ['server.address', 'server.headless', 'server.enableXsrfProtection', 'server.enableCORS',"
            " 'server.maxUploadSize', 'client.showErrorDetails', 'browser.gatherUsageStats']\n"
            "print(repr([c.get_option(k) for k in keys]), E.NONE == c.get_option('client.showErrorDetails'))\n"
            "print(repr([c.get_where_defined(k) for k in keys]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    values, defined = out[0], out[1]
    assert values == "['127.0.0.1', True, True, True, 100, 'none', False] True", values
    assert defined.count(str(CONFIG)) == 7, defined


def test_team_serving_is_an_explicit_flag():
    make = (ROOT / "Makefile").read_text()
    assert "serve-team:" in make and "--server.address 0.0.0.0" in make
    run_target = make.split("\nrun:")[1].split("\n\n")[0]
    assert "0.0.0.0" not in run_target
