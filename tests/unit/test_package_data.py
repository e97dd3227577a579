"""A non-editable install ships every file the console and the docs page serve."""

from __future__ import annotations

import configparser
import re
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


def test_every_python_the_package_names_is_one_ci_tests():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    named = re.findall(r"Python :: (3\.\d+)", config["metadata"]["classifiers"])
    floor = re.search(r">=\s*(3\.\d+)", config["options"]["python_requires"]).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    tested = {"3.11", *re.search(r"for version in ([\d. ]+); do", ci).group(1).split()}
    assert named[0] == floor  # the oldest named is the floor python_requires sets
    assert set(named) == tested, (named, tested)  # 3.11 is the main venv's python3
