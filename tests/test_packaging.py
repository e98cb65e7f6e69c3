"""Packaging: the wheel of pyproject.toml carries the app (router and pages) and the ``ood-lab``
entry point, and both command names show in the CLI's usage."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ood_core

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the sources (pip builds in the source folder; the
    checkout stays clean) with the setuptools of this environment."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ood_core", src / "ood_core", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "--disable-pip-version-check", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("ood_lab-*.whl")
    return whl


def test_wheel_carries_the_app_and_the_entry_point(wheel):
    assert wheel.name.startswith(f"ood_lab-{ood_core.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry = configparser.ConfigParser()
        entry.read_string(z.read(info).decode())
        metadata = z.read(info.replace("entry_points.txt", "METADATA")).decode()
    pages = {f"ood_core/app/app_pages/{p.name}" for p in (ROOT / "ood_core" / "app" / "app_pages").glob("*.py")}
    assert len(pages) >= 9 and pages <= names
    assert {"ood_core/app/main.py", "ood_core/app/__init__.py", "ood_core/console.py", "ood_core/recipes/__init__.py",
            "ood_core/__main__.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "checkpoints/")) for n in names)
    assert entry["console_scripts"]["ood-lab"] == "ood_core.console:main"
    assert "Requires-Dist: streamlit" in metadata and "Provides-Extra: test" in metadata


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_python_m_and_the_console_script_name_themselves():
    res = subprocess.run([sys.executable, "-m", "ood_core", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m ood_core ")
    # what the installed `ood-lab` script does: sys.argv[0] is its path
    script = "import sys; from ood_core.console import main; sys.argv[0] = '/venv/bin/ood-lab'; sys.exit(main())"
    res = _run(script, "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ood-lab "), res.stdout + res.stderr
    assert "app" in res.stdout.split("positional arguments")[1]  # the app command is listed
    res = _run(script, "train", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ood-lab train "), res.stdout + res.stderr


def test_ood_lab_app_runs_streamlit_on_the_packaged_app(monkeypatch, tmp_path):
    from ood_core import console

    calls = []

    class Proc:
        def __init__(self, cmd, env):
            calls.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(console.subprocess, "Popen", Proc)
    monkeypatch.delenv("OOD_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert console.main(["app", "--server.port", "8502"]) == 0
    (cmd, env), = calls
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[-2:] == ["--server.port", "8502"]  # the user's last: they win
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none"  # as the checkout's .streamlit/config.toml
    assert Path(cmd[4]) == ROOT / "ood_core" / "app" / "main.py" and Path(cmd[4]).is_file()
    assert env["OOD_CHECKPOINT_DIR"] == str(tmp_path / "checkpoints")
