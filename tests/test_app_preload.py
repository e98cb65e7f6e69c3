"""The app imports captum and reads the far-real photographs in background threads once per process
(``cached.preload_attribution_modules``, ``cached.preload_real_images``),
so the first page after a server start pays for neither. Checked in a subprocess: this process
may have imported captum and read the images already."""
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


def test_preload_reads_every_far_real_image_once_in_the_background(tmp_path):
    """The server reads the far-real sets' photographs at start-up (0.25 s that the first page
    with a digits model paid before), once, and the benchmark built afterwards reads none again."""
    code = textwrap.dedent("""
        import json
        from ood_core.app import cached
        from ood_core.data import embedded as E
        before = E._real_source.cache_info().currsize
        first = cached.preload_real_images()
        second = cached.preload_real_images()
        first.join(120)
        loaded = E._real_source.cache_info()
        E.load_digits_benchmark()
        after = E._real_source.cache_info()
        print(json.dumps({"before": before, "same": first is second, "daemon": first.daemon,
                          "alive": first.is_alive(), "loaded": loaded.currsize, "sources": len(E.REAL_SOURCES),
                          "read_again": after.misses - loaded.misses}))
    """)
    env = {**os.environ, "OOD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"before": 0, "same": True, "daemon": True, "alive": False, "loaded": got["sources"],
                   "sources": 11, "read_again": 0}
