"""``ood-lab import``: a lab checkpoint of a model trained elsewhere (see :mod:`ood_core.importing`)."""
from __future__ import annotations

from .cli_options import add_data_options, add_device_option, at_least, feature_progress, suffixed
from .errors import OODCoreError
from .fileio import sigint_deferred


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OODCoreError(f"{option} takes comma-separated numbers, one per channel, e.g. 0.485,0.456,0.406") from None


def cmd_import(args) -> int:
    from .checkpoint import save_checkpoint
    from .evaluate import format_table
    from .importing import import_model

    out = suffixed(args.out, "--out", ".pt")
    at_least(args, "--batch-size", 1)
    preprocess = {"resize": args.resize, "crop": args.crop, "mean": _floats(args.mean, "--mean"),
                  "std": _floats(args.std, "--std")}
    progress, _ = feature_progress() if not args.quiet else (None, None)
    model, meta = import_model(args.model, args.dataset, args.weights, feature_layer=args.feature_layer,
                               preprocess=preprocess, download=bool(args.download), data_root=args.data_root,
                               allow_code=True, device=args.device, evaluate_after=not args.no_eval,
                               batch_size=args.batch_size, progress=progress)
    with sigint_deferred():
        save_checkpoint(out, model, meta)
    args._written = [str(out)]
    imp = meta["imported"]
    print(f"saved {out}: {imp['arch']} ({imp['weights']}) on {meta['dataset']['name']}, features {imp['feature_dim']}-d "
          f"from {imp['feature_layer'] or 'the input of ' + imp['head_layer']}")
    if "metrics" in meta and not args.quiet:
        quality = {k: v for k, v in meta["metrics"].items() if k.startswith("id_")}
        print(", ".join(f"{k} {100 * v:.2f}%" for k, v in quality.items()) + " on the test split")
        print(format_table(meta["metrics"]))
    return 0


def add_import_command(sub) -> None:
    """The ``import`` subcommand's parser, added to ``sub`` (argparse subparsers)."""
    im = sub.add_parser("import", help="make a lab checkpoint of a model trained elsewhere (torchvision, timm, your code)",
                        description="Wrap a torchvision/timm architecture or your own nn.Module with its weights, "
                                    "check it on DATASET, score its OOD sets and save a lab checkpoint that every "
                                    "command and app page reads like a trained one.")
    im.add_argument("--model", required=True,
                    help="tv:NAME (any torchvision classification model, e.g. tv:resnet50, tv:vit_b_16), timm:NAME "
                         "(needs timm), or pkg.module:factory (your code: factory() returns the nn.Module)")
    im.add_argument("--weights", default=None,
                    help="a .pth/.pt state dict (read weights-only) or .safetensors file, or a torchvision weights "
                         "name such as IMAGENET1K_V1 (downloaded only with --download); default: random init")
    im.add_argument("--dataset", required=True,
                    help="imagefolder:DIR (class subfolders; DIR/train + DIR/test when present) or a preset such as "
                         "cifar10 (see `list`)")
    im.add_argument("--feature-layer", default=None, metavar="NAME",
                    help="take the features from this submodule's output; default: the input of the final nn.Linear")
    im.add_argument("--resize", type=int, default=None, help="shorter image side before the centre crop; default: "
                    "the weights' (256 for most torchvision models)")
    im.add_argument("--crop", type=int, default=None, help="input size; default: the weights' (224 for most)")
    im.add_argument("--mean", default=None, help="per-channel mean, comma-separated; default: the weights'")
    im.add_argument("--std", default=None, help="per-channel std, comma-separated; default: the weights'")
    im.add_argument("--out", required=True, help="checkpoint file to write (.pt); written atomically")
    im.add_argument("--no-eval", action="store_true", help="save without scoring the OOD sets")
    im.add_argument("--batch-size", type=int, default=128, help="default: 128")
    im.add_argument("--quiet", action="store_true", help="no progress bars or table")
    add_device_option(im)
    add_data_options(im)
    im.set_defaults(func=cmd_import)
