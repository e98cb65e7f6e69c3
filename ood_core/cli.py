"""Command line: ``ood-lab {train,import,evaluate,geometry,project,features,list,manifest,app} ...``
(also ``python -m ood_core``; ``--help`` on each). The options the commands share are in
:mod:`ood_core.cli_options`, the ``import`` command in :mod:`ood_core.cli_import`.

Errors caused by input print one line on stderr and exit with status 2; an unexpected error
(a bug) prints one line and exits with 1; Ctrl-C prints one line saying what is on disk and
exits with 130. ``--debug`` shows the traceback instead. (Usage errors found by argparse exit
with 2 and argparse's own usage message.) Every output file is written atomically; output
paths are checked before any long computation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_import import add_import_command
from .cli_options import (Interrupted, add_data_options, add_device_option, at_least, cached_outputs,
                          check_command_files, checkpoint_command, chosen_cache_dir, csv_list, download_flag,
                          key_values, suffixed, write_output)
from .errors import OODCoreError, TrainingDiverged
from .fileio import OutputError, sigint_deferred


# --------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from tqdm import tqdm

    from .checkpoint import read_checkpoint, save_checkpoint
    from .data import parse_known
    from .evaluate import format_table
    from .train import recommended_config, train

    out = suffixed(args.out, "--out", ".pt")
    at_least(args, "--checkpoint-every", 0, " (0 = off)")
    at_least(args, "--feature-dim", 1)
    cfg = recommended_config(args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             lr_min=args.lr_min, schedule=args.schedule,
                             weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed,
                             device=args.device, geometry_every=args.track_geometry, amp=args.amp,
                             channels_last=args.channels_last or None, workers=args.workers)
    model_params = {k: v for k, v in (("arch", args.arch), ("feature_dim", args.feature_dim)) if v is not None}
    loss_params = key_values(args.param)
    bar = None

    stage = None

    def progress(p):
        nonlocal bar, stage
        if bar is not None and p.stage != stage:  # one bar per stage ("pretrain": a fine-tune recipe's start)
            bar.close()
            bar = None
        if bar is None:
            stage = p.stage
            bar = tqdm(total=p.epochs * p.steps, desc=f"{p.stage} {args.method}/{args.dataset}", unit="step",
                       disable=args.quiet, file=sys.stderr)
        bar.update(1)
        if p.val is not None:
            bar.set_postfix(epoch=f"{p.epoch}/{p.epochs}", loss=f"{p.loss:.4f}",
                            **{f"val_{k.removeprefix('id_')}": f"{v:.3f}" for k, v in p.val.items()})

    existed = out.exists()
    saving = False  # a partial save has begun: `out` may now hold one (each save is atomic)

    def save_partial(model, meta):
        nonlocal saving
        saving = True
        with sigint_deferred():
            save_checkpoint(out, model, meta)

    def on_disk() -> str:
        """What `out` holds now, read from the file itself (so Ctrl-C at any moment reports the truth)."""
        partial = None
        if saving:
            try:
                partial = read_checkpoint(out)["meta"].get("partial")
            except OODCoreError:
                partial = None
        if partial:
            return (f"{out} holds the last good state: a partial checkpoint after epoch {partial['epochs_done']} of "
                    f"{partial['epochs']} (loadable; run train again for the complete one)")
        return f"nothing was written ({'the previous ' + str(out) + ' is untouched' if existed else 'no ' + str(out)})"

    try:
        result = train(args.method, args.dataset, cfg, known=parse_known(args.known), progress=progress,
                       model_params=model_params, loss_params=loss_params, init=args.init,
                       checkpoint_every=args.checkpoint_every, checkpoint=save_partial if args.checkpoint_every else None,
                       data_root=args.data_root, download=download_flag(args))
    except TrainingDiverged as e:
        head = str(e).split(";")[0]
        raise TrainingDiverged(f"{head}; {on_disk()}. Lower the learning rate (now {cfg.lr:g}) "
                               "or check the data for NaN/Inf") from e
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {on_disk()}") from None
    finally:
        if bar is not None:
            bar.close()
    if result.rank != 0:  # under torchrun only rank 0 writes the checkpoint and reports
        return 0
    try:
        with sigint_deferred():
            save_checkpoint(out, result.model, result.meta)
    except KeyboardInterrupt:  # the write is atomic: `out` holds what it held before
        raise Interrupted(f"interrupted while saving; {on_disk()}") from None
    except OutputError as e:  # a full disk, say: the atomic write left `out` as it was
        raise OutputError(f"{e}; {on_disk()}") from None
    args._written = [str(out)]
    report = result.meta["metrics"]
    quality = {k: v for k, v in report.items() if k.startswith("id_")}
    print(f"saved {out}  ({', '.join(f'{k} {100 * v:.2f}%' for k, v in quality.items())} on the test split)")
    if not args.quiet:
        print(format_table(report))
    else:  # the table says so too; quiet, these lines are all that does
        from .evaluate import MISSING_NOTE

        if report.get("skipped_scores"):
            print("left out (cannot be fitted here): " + ", ".join(report["skipped_scores"]))
        if report.get("missing_ood"):
            print(MISSING_NOTE + ", ".join(report["missing_ood"]))
    return 0


# --------------------------------------------------------------------------- evaluate
def _checkpoint_and_benchmark(args):
    """``(model, meta, bench)`` of ``--checkpoint`` on ``--device``."""
    from .checkpoint import checkpoint_benchmark, load_checkpoint
    from .runtime import select_device

    model, meta = load_checkpoint(args.checkpoint, device=select_device(args.device), allow_code=args.allow_code)
    return model, meta, checkpoint_benchmark(meta, data_root=args.data_root, download=download_flag(args),
                                             name=str(args.checkpoint))


def cmd_evaluate(args) -> int:
    import numpy as np

    from .data import load_user_ood
    from .errors import unknown
    from .evaluate import evaluate, format_table
    from .methods import default_score_names, method_score_params
    from .scores import SCORES

    if args.scores:
        suffixed(args.scores, "--scores", ".npz")
    if args.outputs:
        suffixed(args.outputs, "--outputs", ".npz")
    model, meta, bench = _checkpoint_and_benchmark(args)
    ds = meta["dataset"]
    ood_names = csv_list(args.ood)
    ood_sets = None  # None = every built-in set of the dataset
    if ood_names == ["none"]:
        ood_sets = {}
    elif ood_names is not None:
        for n in ood_names:
            if n not in bench.ood:
                raise unknown(f"OOD set for {bench.name}", n, list(bench.ood) + ["none"])
        ood_sets = {n: bench.ood[n] for n in ood_names}
    extra = {}
    for f in args.ood_file or []:
        name, x = load_user_ood(f, bench.input_shape)
        bench.check_user_names([name])
        if name in extra:
            raise OODCoreError(f"two --ood-file inputs share the name {name!r}; rename one")
        extra[name] = x
    score_names = csv_list(args.score_names)
    for n in score_names or []:
        if n not in SCORES:
            raise unknown("score", n, SCORES)
    by_name = bool(score_names)
    score_names = score_names or default_score_names(meta, bench)

    used = list(bench.ood) if ood_sets is None else list(ood_sets)
    needs_train = any(SCORES[n].requires_fit for n in score_names)  # a class attribute: nothing to build
    outputs, _ = cached_outputs(args, model, bench, ["id", *(["train"] if needs_train else []), *used], extra_ood=extra)
    ev = evaluate(model, bench, ood_sets=ood_sets, score_names=score_names, extra_ood=extra,
                  batch_size=args.batch_size, device=args.device, outputs=outputs,
                  score_params=method_score_params(meta), skip_unfit=not by_name)
    report = {**ev.report, "checkpoint": str(args.checkpoint), "method": meta.get("method"),
              "dataset": ds.get("name"), "known": ds.get("known")}
    if args.json:
        write_output(args, Path(args.json), lambda f: f.write(json.dumps(report, indent=2).encode()))
    if args.scores:
        write_output(args, Path(args.scores), lambda f: np.savez(f, **ev.scores))
    if args.outputs:
        arrays = {f"{name}/{part}": getattr(ev.outputs[name], part).numpy()
                  for name in ["id", *ev.report["ood"]] for part in ("features", "logits")}
        write_output(args, Path(args.outputs), lambda f: np.savez(f, **arrays))
    quality = {k: v for k, v in report.items() if k.startswith("id_")}
    print(f"{meta.get('method')} on {ds.get('name')} (known {ds.get('known')}): "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in quality.items()))
    print(format_table(report))
    print("AUROC and FPR95 in %; FPR95 = FPR on OOD at the threshold keeping 95% of ID; scores: high = ID.")
    return 0


# --------------------------------------------------------------------------- geometry
def cmd_geometry(args) -> int:
    from .geometry import geometry_summary

    at_least(args, "--probe-size", 1)
    at_least(args, "--n-proj", 1)
    model, meta, bench = _checkpoint_and_benchmark(args)
    jac = None if args.jacobian == "none" else args.jacobian
    outputs, _ = cached_outputs(args, model, bench)
    summary = geometry_summary(model, bench, outputs=outputs, jacobian=jac, n_proj=args.n_proj,
                               probe_size=args.probe_size)
    summary = {"checkpoint": str(args.checkpoint), "method": meta.get("method"), **summary}
    if args.json:
        write_output(args, Path(args.json), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    print(f"{meta.get('method')} on {bench.name}: geometry of the representation")
    if "nc" in summary:
        print("neural collapse (training split; 0 = collapsed): "
              + ", ".join(f"{k} {v:.4f}" for k, v in summary["nc"].items()))
        g = summary["class_geometry"]
        print(f"classes (ID test): mean radius {g['mean_radius']:.3f}, mean centre distance "
              f"{g['mean_center_distance']:.3f}, ratio {g['separation_ratio']:.2f}, Davies-Bouldin {g['davies_bouldin']:.3f}")
    cols = ["||z|| mean", "outside span{w}"] + (["inside means"] if "nc" in summary else []) \
        + (["||J|| mean", "JND"] if jac else [])
    print("| set | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in ["id", *bench.ood]:
        cells = [f"{summary['feature_norms'][s]['mean']:.3f}", f"{summary['energy_outside_span_w'][s]:.3f}"]
        if "nc" in summary:
            cells.append(f"{summary['energy_inside_mean_subspace'][s]:.3f}")
        if jac:
            cells += [f"{summary['jacobian_mean'][s]:.3f}", "" if s == "id" else f"{summary['jnd'][s]:+.3f}"]
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("outside span{w} / inside means: mean share of ||z||^2 outside the classifier's row space / inside the "
          f"centred class-mean subspace; ||J||: Frobenius norm of d(z/||z||)/dx ({jac or 'not computed'}), "
          "JND = set mean - ID mean")
    return 0


def cmd_project(args) -> int:
    import numpy as np

    from .projection import project_benchmark, separation_in_map

    from .checks import seed

    out = suffixed(args.out, "--out", ".npz")
    seed(args.seed, "--seed")
    model, meta, bench = _checkpoint_and_benchmark(args)
    outputs, _ = cached_outputs(args, model, bench, ["id", *bench.ood])
    if args.method == "umap":
        print("fitting UMAP (the first fit in a process spends ~10-30 s compiling with numba)...", file=sys.stderr)
    proj = project_benchmark(model, bench, method=args.method, fit_on=args.fit_on, normalize=args.normalize,
                             outputs=outputs, cache_dir=chosen_cache_dir(args), seed=args.seed)
    write_output(args, out, lambda f: np.savez(f, **proj.coords))
    where = "from the cache" if proj.from_cache else f"in {proj.seconds:.1f} s"
    print(f"{args.method} map of {meta.get('method')} features (fit on {args.fit_on}), {where}; wrote {out}")
    if proj.caveat:
        print(f"caveat: {proj.caveat}")
    print("| set | points | mean distance to nearest ID point / ID spacing |\n|---|---|---|")
    sep = separation_in_map(proj)
    for name, xy in proj.coords.items():
        print(f"| {name} | {len(xy)} | {'1 (reference)' if name == 'id' else f'{sep[name]:.2f}'} |")
    return 0


# --------------------------------------------------------------------------- features
def cmd_features(args) -> int:
    import time

    from .errors import unknown
    from .feature_cache import SUBDIR, FeatureCache, model_fingerprint

    if args.no_cache:
        raise OODCoreError("`features` fills the disk cache; drop --no-cache")
    model, meta, bench = _checkpoint_and_benchmark(args)
    available = ["train", "val", "id", *bench.ood]
    sets = csv_list(args.sets) or ["id", "train", *bench.ood]
    for name in sets:
        if name not in available:
            raise unknown(f"set of {bench.name}", name, available)
    start = time.perf_counter()
    outputs, seen = cached_outputs(args, model, bench, sets)
    cache = FeatureCache(chosen_cache_dir(args) / SUBDIR)
    model_key = model_fingerprint(model)
    print(f"features of {meta.get('method')} on {bench.name} in {cache.folder / model_key} "
          f"({time.perf_counter() - start:.1f} s)")
    print("| set | samples | feature dim | source |\n|---|---|---|---|")
    from_cache = dict(seen)
    for name in sets:
        out = outputs[name]
        print(f"| {name} | {out.features.shape[0]} | {out.features.shape[1]} | "
              f"{'cache' if from_cache.get(name) else 'extracted'} |")
    print("`evaluate`, `geometry`, `project` and the app now read these instead of running the model.")
    return 0


# --------------------------------------------------------------------------- list
def cmd_list(args) -> int:
    from .data import DATASET_DESCRIPTIONS, IMAGE_OOD_SETS, LAYOUTS, PRESETS, REAL_OOD_SETS, load_benchmark
    from .methods import METHODS
    from .scores import COSTS, SCORES

    print("datasets:")
    for name, desc in DATASET_DESCRIPTIONS.items():
        print(f"  {name:16s} {desc}")
    print("OOD sets:")
    for name in DATASET_DESCRIPTIONS:
        if name in PRESETS:  # real data: list the preset, load nothing
            p = PRESETS[name]
            print(f"  {name:16s} " + ", ".join(f"{s} ({g})" for g in ("near", "far") for s in p.get(g, []))
                  + "  [? = used if present]")
            continue
        b = load_benchmark(name)
        print(f"  {name:16s} " + ", ".join(f"{s} ({b.ood_groups[s]}, n={b.ood[s].shape[0]})" for s in b.ood))
    print(f"  far-synthetic families for any image dataset: {', '.join(IMAGE_OOD_SETS)}")
    print(f"  far-real sets for the grey embedded datasets (scikit-image crops): {', '.join(REAL_OOD_SETS)}")
    print("real-data layouts under --data-root / $OOD_DATA_ROOT (--download fetches them):")
    for name, layout in LAYOUTS.items():
        print(f"  {name:16s} {layout}")
    print("methods:")
    for name, m in METHODS.items():
        params = ", ".join(f"{k}={v}" for k, v in m.loss_params.items())
        train_opts = ", ".join([f"{k}={v}" for k, v in m.train_defaults.items()]
                               + ([f"fine-tunes {m.pretrain}"] if m.pretrain else []))
        print(f"  {name:16s} {m.task}, {m.head} head{', spectral norm' if m.spectral_norm else ''}: {m.description}"
              + (f" [params: {params}]" if params else "") + (f" [training: {train_opts}]" if train_opts else ""))
    print("scores (high = ID):")
    for name, cls in SCORES.items():
        extra = [] if cls.cost == "outputs" else [f"needs {COSTS[cls.cost]}"]
        if set(cls.tasks) != {"multiclass", "multilabel"}:
            extra.append(f"{'/'.join(cls.tasks)} only")
        print(f"  {name:16s} {cls.describe()}" + (f" [{'; '.join(extra)}]" if extra else ""))
    return 0


def cmd_manifest(args) -> int:
    from .checkpoint import write_manifest

    path = write_manifest(args.folder)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- parser
def prog_name(argv0: str | None = None) -> str:
    """How the CLI was called, for its usage lines: the script's name (``ood-lab``), or
    ``python -m ood_core`` when run as a module (``argv0`` defaults to ``sys.argv[0]``)."""
    argv0 = sys.argv[0] if argv0 is None and sys.argv else argv0
    name = Path(argv0 or "").name
    return "python -m ood_core" if name in ("", "__main__.py", "-c", "-m") else name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; ``prog`` (default :func:`prog_name`) names it in every usage line."""
    from .serve import APP_HELP

    p = argparse.ArgumentParser(prog=prog or prog_name(), description="Train, evaluate and list OOD detectors.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    # listed here; main() runs it before parsing, since streamlit's options are not ours to parse
    sub.add_parser("app", help=APP_HELP, add_help=False)

    t = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="Train METHOD on DATASET and save weights + metadata + OOD report to --out.")
    t.add_argument("--method", default="ce", help="training method (see `list`); default: ce")
    t.add_argument("--dataset", default="digits",
                   help="embedded dataset or real-data preset such as cifar10 (see `list`); default: digits")
    t.add_argument("--known", default=None, help="known classes, comma-separated, e.g. 1,3,5,7,9; default 0-5")
    t.add_argument("--epochs", type=int, default=None, help="default: 30, or the method's own (see `list`)")
    t.add_argument("--batch-size", type=int, default=None, help="default: 64, or the method's own")
    t.add_argument("--lr", type=float, default=None, help="learning rate; default: 1e-3, or the method's own")
    t.add_argument("--lr-min", type=float, default=None, help="final lr of the cosine schedule; default: 0, "
                   "or the method's own")
    t.add_argument("--schedule", choices=("cosine-epoch", "cosine-step"), default=None,
                   help="cosine annealing stepped per epoch or per optimiser step; default: cosine-epoch, "
                        "or the method's own")
    t.add_argument("--weight-decay", type=float, default=None, help="default: 5e-4, or the method's own")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default=None, help="default: adam, or the method's own")
    t.add_argument("--seed", type=int, default=0, help="default: 0")
    add_device_option(t)
    t.add_argument("--arch", default=None, help="backbone: smallcnn, mlp, resnet18; default: by input shape")
    t.add_argument("--feature-dim", type=int, default=None, help="feature dimension (smallcnn/mlp)")
    t.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a loss parameter of the method (see `list`), e.g. --param T=32; repeatable")
    t.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                   help="mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA); default: off")
    t.add_argument("--channels-last", action="store_true", help="NHWC memory layout for image models (GPU)")
    t.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader worker processes that gather and pin batches; 0 = in the main process (default)")
    t.add_argument("--track-geometry", type=int, default=0, metavar="N",
                   help="record NC metrics and the JND on a small probe every N epochs into the checkpoint's "
                        "history (shown by the app); default: 0 = off")
    t.add_argument("--init", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (same model spec and benchmark) instead of a random "
                        "init; oe and separation otherwise first train their ce starting model (see `list`)")
    t.add_argument("--out", required=True, help="checkpoint file to write (.pt); written atomically")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also save the model to --out after every N epochs, marked partial (no OOD report), so a "
                        "run that diverges (NaN/Inf loss) or is interrupted leaves its last good state; "
                        "the final save replaces it; default: 0 = off")
    t.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_data_options(t)
    t.set_defaults(func=cmd_train)

    add_import_command(sub)

    e = checkpoint_command(sub, "evaluate", cmd_evaluate, help="score ID and OOD sets with a checkpoint",
                            description="Evaluate a checkpoint on its ID test split vs OOD sets with every score.")
    e.add_argument("--ood", default=None,
                   help="built-in OOD sets, comma-separated, or 'none'; default: all of the dataset's (see `list`)")
    e.add_argument("--ood-file", action="append", metavar="ARRAY_OR_FOLDER",
                   help="your own OOD set: .npy/.npz array (images 'x' in an .npz) or image folder, converted to "
                        "the model's input format and named by its file stem; repeatable")
    e.add_argument("--score-names", default=None,
                   help="scores, comma-separated (see `list`); default: the checkpoint's method's scores")
    e.add_argument("--json", metavar="REPORT.json", help="write the metrics report as JSON")
    e.add_argument("--scores", metavar="SCORES.npz", help="write per-sample scores keyed 'id/SCORE', 'SET/SCORE'")
    e.add_argument("--outputs", metavar="OUTPUTS.npz",
                   help="write the features and logits of the ID test split and every OOD set, keyed 'id/features', "
                        "'id/logits', 'SET/features', 'SET/logits', to recompute any score outside the lab")
    e.add_argument("--batch-size", type=int, default=512, help="default: 512")

    g = checkpoint_command(sub, "geometry", cmd_geometry,
                            help="neural collapse, subspaces, feature norms and Jacobian norms of a checkpoint",
                            description="Print (and optionally save as JSON) the representation geometry of a "
                                        "checkpoint on its benchmark: NC1-NC4, class radii and distances, energy "
                                        "shares in the principal subspaces, feature norms, Jacobian norms and JND "
                                        "per OOD set.")
    g.add_argument("--jacobian", choices=("estimate", "exact", "none"), default="estimate",
                   help="how to compute Jacobian norms; default: estimate (random projections)")
    g.add_argument("--n-proj", type=int, default=16, help="projections for --jacobian estimate; default: 16")
    g.add_argument("--probe-size", type=int, default=256, help="samples per set for Jacobian norms; default: 256")
    g.add_argument("--json", metavar="GEOMETRY.json", help="write the whole summary as JSON")

    pr = checkpoint_command(sub, "project", cmd_project, "features and maps",
                             help="2-D PCA/UMAP map of a checkpoint's ID and OOD features",
                             description="Map the features of the ID test split and every OOD set to 2-D (one "
                                         "shared PCA or UMAP), save the coordinates per set as .npz and print how "
                                         "far each set sits from ID in the map. Maps are cached on disk by model "
                                         "and data.")
    pr.add_argument("--method", choices=("pca", "umap"), default="pca", help="default: pca")
    pr.add_argument("--fit-on", choices=("union", "id"), default="union",
                    help="fit on all sets (default) or on ID only (UMAP then hides OOD inside ID clusters)")
    pr.add_argument("--normalize", action="store_true", help="L2-normalise features first (cosine-head models)")
    pr.add_argument("--seed", type=int, default=0, help="UMAP random_state; default: 0")
    pr.add_argument("--out", required=True, help="coordinates per set (.npz), written atomically")

    fe = checkpoint_command(sub, "features", cmd_features,
                             help="extract a checkpoint's features once, into the disk cache",
                             description="Run the model over its benchmark's sets in batches (progress bars on "
                                         "stderr) and store features and logits in the disk cache, keyed by the "
                                         "weights and the data. `evaluate`, `geometry`, `project` and the app then "
                                         "read them.")
    fe.add_argument("--sets", default=None,
                    help="comma-separated: train, val, id (the ID test split) or OOD set names; default: id, "
                         "train and every OOD set")
    fe.add_argument("--batch-size", type=int, default=512, help="default: 512")

    ls = sub.add_parser("list", help="list datasets, OOD sets, methods and scores")
    ls.set_defaults(func=cmd_list)

    mf = sub.add_parser("manifest", help="write FOLDER/manifest.json describing every checkpoint in FOLDER")
    mf.add_argument("folder", nargs="?", default="checkpoints", help="default: checkpoints")
    mf.set_defaults(func=cmd_manifest)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The ``ood-lab`` / ``python -m ood_core`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:
        from .serve import serve_app

        return serve_app(argv[1:])
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        check_command_files(args)  # before any work
        return args.func(args)
    except KeyboardInterrupt as e:
        if args.debug:
            import traceback

            traceback.print_exc()
        written = getattr(args, "_written", [])
        msg = str(e) if isinstance(e, Interrupted) else (
            f"interrupted; wrote {', '.join(written)} (complete) before that" if written
            else "interrupted; nothing was written")
        print(msg, file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc.: not an error
        sys.stderr.close()
        return 0
    except OODCoreError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"error: internal error {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
