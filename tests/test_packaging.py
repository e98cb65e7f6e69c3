"""Packaging: the wheel of pyproject.toml carries the app (router and pages) and the ``ood-lab``
entry point, and both command names show in the CLI's usage."""
from __future__ import annotations

import configparser
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import ood_core
from ood_core.paths import SHIPPED_CHECKPOINTS

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


def test_wheel_carries_the_app_the_shipped_files_and_the_entry_point(wheel):
    assert wheel.name.startswith(f"ood_lab-{ood_core.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry = configparser.ConfigParser()
        entry.read_string(z.read(info).decode())
        metadata = z.read(info.replace("entry_points.txt", "METADATA")).decode()
    pages = {f"ood_core/app/app_pages/{p.name}" for p in (ROOT / "ood_core" / "app" / "app_pages").glob("*.py")}
    assert len(pages) >= 9 and pages <= names
    assert {"ood_core/app/main.py", "ood_core/app/__init__.py", "ood_core/serve.py", "ood_core/recipes/__init__.py",
            "ood_core/__main__.py", "ood_core/shipped/results/compare.json", "ood_core/shipped/results/mechanisms.json",
            "ood_core/shipped/results/precomputed.json", "ood_core/shipped/checkpoints/manifest.json"} <= names
    shipped = {f"ood_core/shipped/checkpoints/{p.name}" for p in SHIPPED_CHECKPOINTS.glob("*.pt")}
    assert len(shipped) >= 9 and shipped <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "checkpoints/", "results/")) for n in names)
    assert entry["console_scripts"]["ood-lab"] == "ood_core.cli:main"
    assert "Requires-Dist: streamlit" in metadata and "Provides-Extra: test" in metadata


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_prog_name_follows_how_the_cli_was_called():
    from ood_core.cli import prog_name

    assert prog_name("/venv/bin/ood-lab") == "ood-lab"
    assert prog_name("/repo/ood_core/__main__.py") == "python -m ood_core"
    assert prog_name("") == "python -m ood_core"


def test_python_m_and_the_console_script_name_themselves():
    res = subprocess.run([sys.executable, "-m", "ood_core", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m ood_core "), res.stdout + res.stderr
    assert "app" in res.stdout.split("positional arguments")[1]  # the app command is listed
    # what the installed `ood-lab` script does: sys.argv[0] is its path
    script = "import sys; from ood_core.cli import main; sys.argv[0] = '/venv/bin/ood-lab'; sys.exit(main())"
    res = _run(script, "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ood-lab "), res.stdout + res.stderr
    res = _run(script, "train", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ood-lab train "), res.stdout + res.stderr
    res = _run(script, "train", "--no-such-option")
    assert res.returncode == 2 and res.stderr.startswith("usage: ood-lab train "), res.stdout + res.stderr


def test_ood_lab_app_runs_streamlit_on_the_packaged_app(monkeypatch):
    from ood_core import cli, serve

    calls = []

    class Proc:
        def __init__(self, cmd):
            calls.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(serve.subprocess, "Popen", Proc)
    assert cli.main(["app", "--server.port", "8502"]) == 0
    cmd, = calls
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[-2:] == ["--server.port", "8502"]  # the user's last: they win
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none"  # as the checkout's .streamlit/config.toml
    assert Path(cmd[4]) == ROOT / "ood_core" / "app" / "main.py" and Path(cmd[4]).is_file()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable). Its dependencies are
    this environment's (a .pth line adds their folders: installing torch and streamlit again would
    take minutes); this checkout's ood_core is not importable there."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")  # after the venv's own packages
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                          "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return venv


PROBE = """
from pathlib import Path
import ood_core.serve as serve
from streamlit.testing.v1 import AppTest
package = Path(serve.__file__).parent
at = AppTest.from_file(str(serve.APP_MAIN), default_timeout=240)
at.run()
assert not at.exception, at.exception
box = at.sidebar.selectbox[0]
assert "ce_digits.pt" in box.options, box.options  # shown by file name
assert Path(box.value).is_relative_to(package / "shipped" / "checkpoints"), box.value
at.switch_page(str(package / "app" / "app_pages" / "claims.py"))
at.run()
assert not at.exception and not at.error, (at.exception, at.error)
print("ok", len(box.options))
"""


def test_the_installed_wheel_trains_and_serves_the_app_with_the_shipped_checkpoints(installed, tmp_path):
    import socket
    import urllib.request

    bin_ = installed / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("OOD_CHECKPOINT_DIR", "PYTHONPATH")}
    where = subprocess.run([str(bin_ / "python"), "-c", "import ood_core; print(ood_core.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr  # not the checkout's

    res = subprocess.run([str(bin_ / "ood-lab"), "train", "--dataset", "toy2d", "--epochs", "1", "--quiet",
                          "--out", "mine.pt"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0 and (tmp_path / "mine.pt").is_file(), res.stdout + res.stderr

    # the installed app, rendered by AppTest in the venv: it lists the shipped checkpoints from the
    # package folder, and its Claims page reads the shipped results
    res = subprocess.run([str(bin_ / "python"), "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stdout + res.stderr

    # and `ood-lab app` serves it over HTTP
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(bin_ / "ood-lab"), "app", "--server.headless", "true", "--server.port", str(port),
                               "--server.address", "127.0.0.1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and health != "ok":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    health = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert health == "ok"
        server.terminate()  # `ood-lab app` passes SIGTERM on to the streamlit server it started
        server.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _streamlit_serving(port):
            time.sleep(0.5)
        assert not _streamlit_serving(port), "the streamlit server outlived `ood-lab app`"
    finally:
        server.kill()


def _streamlit_serving(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
            return True
    except OSError:
        return False
