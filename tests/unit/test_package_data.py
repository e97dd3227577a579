"""A non-editable install ships every file the console and the docs page serve."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_setup_cfg_package_data_covers_every_template_and_asset():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["app"].split()
    app = ROOT / "app"
    served = [*app.glob("templates/**/*"), *app.glob("static/**/*")]
    files = [p.relative_to(app) for p in served if p.is_file()]
    assert any(str(f).endswith(".js") for f in files)
    missing = [str(f) for f in files if not any(f.match(pattern) for pattern in patterns)]
    assert missing == []
