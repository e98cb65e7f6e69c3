"""``ood-lab app`` / ``python -m ood_core app``: serve the Streamlit app shipped inside the package
(``ood_core/app/main.py``) with ``streamlit run``.

The sidebar lists the shipped checkpoints, or the folder ``$OOD_CHECKPOINT_DIR`` names
(:func:`ood_core.checkpoint_store.checkpoint_dir`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# the app's entrypoint, by path: the core does not import ood_core.app (streamlit) to find it
APP_MAIN = Path(__file__).resolve().parent / "app" / "main.py"
# the settings of the checkout's .streamlit/config.toml, which an installed app does not see;
# given first, so the user's own options (later on the command line) win
APP_DEFAULTS = ("--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false")
APP_HELP = "serve the Streamlit app (options after `app` go to `streamlit run`, e.g. --server.port 8502)"


def serve_app(options: list[str]) -> int:
    """``streamlit run <the packaged app> OPTIONS``; returns its exit status. SIGTERM and SIGHUP
    sent to this process are passed on to the server, so stopping ``ood-lab app`` stops it too
    (Ctrl-C reaches both through the terminal)."""
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP_MAIN), *APP_DEFAULTS, *options])
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too; wait for it to shut down
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
