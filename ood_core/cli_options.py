"""What the commands of :mod:`ood_core.cli` share: the options every checkpoint command takes
(device, cache, data root), parsing of small option values, the check of output paths against
inputs, the feature cache with progress bars, and the Ctrl-C bookkeeping of written files."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import OODCoreError
from .fileio import atomic_write, check_outputs


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line telling the user what is on disk now."""


def write_output(args, path, write) -> Path:
    """``atomic_write`` that remembers what this command has written (for the Ctrl-C message)."""
    atomic_write(path, write)
    args._written = [*getattr(args, "_written", []), str(path)]
    return Path(path)


# The files each command writes and reads (argparse dests). Before a command runs, its outputs
# are checked against its inputs and each other (fileio.check_outputs): an output that would
# replace an input (the checkpoint, an --ood-file, --init, --weights) or another output, a
# device or stream such as /dev/stdout, a folder or an unwritable path is refused with one line.
COMMAND_FILES = {
    "train": (("out",), ("init",)),
    "import": (("out",), ("weights",)),
    "evaluate": (("json", "scores", "outputs"), ("checkpoint", "ood_file")),
    "geometry": (("json",), ("checkpoint",)),
    "project": (("out",), ("checkpoint",)),
    "features": ((), ("checkpoint",)),
}


def check_command_files(args) -> None:
    """:func:`ood_core.fileio.check_outputs` of the command's :data:`COMMAND_FILES` (``manifest``
    checks its own, in :func:`ood_core.checkpoint.write_manifest`)."""
    outputs, inputs = COMMAND_FILES.get(args.command, ((), ()))

    def option(dest):
        return "--" + dest.replace("_", "-")

    check_outputs({option(d): getattr(args, d, None) for d in outputs},
                  {option(d): getattr(args, d, None) for d in inputs})


def at_least(args, option: str, minimum: int, what: str = "") -> None:
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    if value is not None and value < minimum:
        raise OODCoreError(f"{option} must be >= {minimum}{what}, got {value}")


def csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def key_values(items: list[str] | None) -> dict:
    """Parse ``["T=32", "rotation=true"]`` into ``{"T": 32.0, "rotation": True}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OODCoreError(f"--param takes KEY=VALUE, got {item!r}")
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
        else:
            try:
                out[key.strip()] = int(value) if low.lstrip("-").isdigit() else float(value)
            except ValueError:
                raise OODCoreError(f"--param {key}: {value!r} is not a number or true/false") from None
    return out


def suffixed(path, option: str, suffix: str) -> Path:
    """``path`` as a Path, refused unless it ends in ``suffix`` (checked before any long computation)."""
    path = Path(path)
    if path.suffix != suffix:
        raise OODCoreError(f"{option} must name a {suffix} file, got {path}")
    return path


def add_cache_options(parser, what: str = "features") -> None:
    parser.add_argument("--cache-dir", default=None,
                        help=f"disk cache of {what} (shared with the app); default: $OOD_CACHE_DIR or ~/.cache/ood-lab")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the disk cache")


def chosen_cache_dir(args):
    """The cache folder chosen by ``--cache-dir`` / ``--no-cache`` (None = no disk cache)."""
    from .paths import default_cache_dir

    if args.no_cache:
        return None
    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise OODCoreError(f"--cache-dir {folder} is a file, not a folder; pass a folder (or --no-cache)")
    return folder


def feature_progress():
    """A ``progress(set, done, total, from_cache)`` callback drawing one tqdm bar per extracted set on
    stderr (only for sets that take over half a second), and the list of ``(set, from_cache)`` seen."""
    from tqdm import tqdm

    bars, seen = {}, []

    def progress(name, done, total, from_cache):
        if from_cache:
            seen.append((name, True))
            return
        if name not in bars:
            bars[name] = tqdm(total=total, desc=f"features {name}", unit="img", file=sys.stderr, delay=0.5)
            seen.append((name, False))
        bar = bars[name]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress, seen


def cached_outputs(args, model, bench, sets=None, extra_ood=None):
    """Model outputs of ``bench``'s sets (default: id, train and every OOD set), read from or
    written to the feature cache unless ``--no-cache``, with progress bars on stderr."""
    from .evaluate import extract_benchmark_outputs
    from .feature_cache import SUBDIR, FeatureCache

    batch_size = getattr(args, "batch_size", 512)
    if batch_size < 1:
        raise OODCoreError(f"--batch-size must be >= 1, got {batch_size}")
    folder = chosen_cache_dir(args)
    progress, seen = feature_progress()
    outs = extract_benchmark_outputs(model, bench, sets, extra_ood=extra_ood, batch_size=batch_size,
                                     cache=FeatureCache(folder / SUBDIR) if folder is not None else None,
                                     progress=progress)
    return outs, seen


def download_flag(args) -> bool | None:
    """``--download`` as the loaders' ``download`` argument: True when given, else None, so that
    ``$OOD_DATA_DOWNLOAD`` still applies."""
    return True if args.download else None


def add_data_options(parser) -> None:
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="folder holding the real datasets (cifar10, voc2007, ...; see `list`); "
                             "default: $OOD_DATA_ROOT. Embedded datasets need none")
    parser.add_argument("--download", action="store_true",
                        help="let torchvision download missing real datasets into the data root (needs internet)")


def add_device_option(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")


def checkpoint_command(sub, name: str, func, cache_what: str = "features", **parser_kw):
    """The parser of a command that reads ``--checkpoint`` on ``--device``, with the cache and
    data-root options every such command takes; the caller adds the command's own options."""
    parser = sub.add_parser(name, **parser_kw)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    parser.add_argument("--allow-code", action="store_true",
                        help="load a checkpoint `import`ed from your own pkg.module:factory model, which imports and "
                             "runs that module (also allowed when $OOD_ALLOW_CODE names the module)")
    add_device_option(parser)
    add_cache_options(parser, cache_what)
    add_data_options(parser)
    parser.set_defaults(func=func)
    return parser
