"""The ``ood-lab`` command (``[project.scripts]`` in pyproject.toml): the CLI of
``python -m ood_core`` (:mod:`ood_core.cli`) under the name it was called by, plus

    ood-lab app [streamlit run options]

which serves the app shipped inside the package (``ood_core/app/main.py``) with
``streamlit run``, listing ``./checkpoints`` unless ``$OOD_CHECKPOINT_DIR`` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# the app's entrypoint, by path: the core does not import ood_core.app (streamlit) to find it
APP_MAIN = Path(__file__).resolve().parent / "app" / "main.py"
# the settings of the checkout's .streamlit/config.toml, which an installed app does not see;
# given first, so the user's own options (later on the command line) win
APP_DEFAULTS = ("--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false")
APP_HELP = "serve the Streamlit app (options after `app` go to `streamlit run`, e.g. --server.port 8502)"


def main(argv: list[str] | None = None) -> int:
    prog = Path(sys.argv[0]).name or "ood-lab"
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:  # before argparse: streamlit's options are not ours to parse
        return run_app(argv[1:])
    return _cli_main(argv, prog)


def run_app(options: list[str]) -> int:
    """``streamlit run <the packaged app> OPTIONS``; returns its exit status."""
    from .checkpoint_store import CHECKPOINT_ENV

    env = dict(os.environ)
    # installed, the package folder holds no checkpoints: list those of the working directory
    env.setdefault(CHECKPOINT_ENV, str(Path.cwd() / "checkpoints"))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP_MAIN), *APP_DEFAULTS, *options], env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too; wait for it to shut down
        return proc.wait()


def _cli_main(argv: list[str], prog: str) -> int:
    """:func:`ood_core.cli.main` with its parser named ``prog`` and listing ``app``.

    ``cli.build_parser`` names every usage line "python -m ood_core"; the parser it returns is
    renamed here (the sub-commands' names were derived from it) instead of building another.
    """
    from . import cli

    build = cli.build_parser

    def build_renamed() -> argparse.ArgumentParser:
        parser = build()
        old = parser.prog
        for p in _parsers(parser):
            p.prog = p.prog.replace(old, prog, 1)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                action._prog_prefix = action._prog_prefix.replace(old, prog, 1)
                action.add_parser("app", help=APP_HELP, add_help=False)  # listed; run by main() before parsing
        return parser

    cli.build_parser = build_renamed
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = build


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)
