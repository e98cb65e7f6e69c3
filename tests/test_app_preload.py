"""The app imports captum in a background thread once per process (``cached.preload_attribution_modules``),
so the first Embeddings page after a server start does not pay for the import. Checked in a
subprocess: this process may have imported captum already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_preload_imports_captum_once_in_the_background_with_the_matplotlib_folder_set(tmp_path):
    code = textwrap.dedent("""
        import json, os, sys, threading
        from ood_core.app import cached
        before = "captum.attr" in sys.modules
        first = cached.preload_attribution_modules()
        second = cached.preload_attribution_modules()
        first.join(120)
        print(json.dumps({"before": before, "same": first is second, "daemon": first.daemon,
                          "not_main": first is not threading.main_thread(), "alive": first.is_alive(),
                          "imported": "captum.attr" in sys.modules,
                          "mpl": os.environ.get("MPLCONFIGDIR")}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update({"OOD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"before": False, "same": True, "daemon": True, "not_main": True, "alive": False,
                   "imported": True, "mpl": str(tmp_path / "cache" / "matplotlib")}
