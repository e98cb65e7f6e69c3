"""Models from elsewhere, wrapped so they return ``ModelOutput(features, logits)`` like the lab's own.

Architectures by name (``arch`` of the model spec):

* ``tv:NAME``: a torchvision classification model, any name that
  ``torchvision.models.list_models(torchvision.models)`` knows (``tv:resnet50``, ``tv:vit_b_16``,
  ``tv:convnext_tiny``, ...), built with ``num_classes`` outputs;
* ``timm:NAME``: a timm model (``pip install 'ood-lab[timm]'``);
* ``pkg.module:factory``: your own ``nn.Module``, returned by ``factory()`` (called with no
  arguments). This imports and runs your code, so it is the command line's choice only: a
  checkpoint of such a model is loaded only where the caller passes ``allow_code=True`` (the
  CLI does; the app asks for ``$OOD_ALLOW_CODE`` naming the module, see :func:`allowed_modules`).

Features: by default the input of the network's final ``nn.Linear`` (the head; a forward
pre-hook reads it on every call), so ``model.head`` is that layer and every score or geometry
function that reads ``head.weight`` / ``head.bias`` (ViM, NC metrics, prototype scores) works.
``feature_layer="NAME"`` takes the (flattened) output of another submodule instead; ``model.head``
is then still the final linear layer, and what needs ``head.weight`` to classify the features
says so when the dimensions differ.

Preprocessing: the wrapper takes inputs in [0, 1] at the benchmark's size, like every model
of the lab, and normalises them with the spec's ``mean`` / ``std`` (inside ``forward``, so the
app, the scores and every gradient see the model the way it was trained); resizing is done once
when the data is loaded (``resize`` then centre ``crop``, see :func:`preprocess_from_weights`).

Weights: :func:`load_weights` reads a ``.pth`` / ``.pt`` state dict with the weights-only
loader, a ``.safetensors`` file, or a torchvision weights enum name (``IMAGENET1K_V1``; fetched
into torch's hub cache only when ``download=True``).
"""
from __future__ import annotations

import importlib
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from .checks import MAX_CLASSES, whole
from .errors import CheckpointError, OODCoreError
from .fileio import open_regular, zip_damage
from .models import ModelOutput, check_input_shape

TV_PREFIX, TIMM_PREFIX = "tv:", "timm:"
ALLOW_CODE_ENV = "OOD_ALLOW_CODE"
# what a torchvision model is fed when the weights say nothing (ImageNet statistics, 224 crop of 256)
IMAGENET_PREPROCESS = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def is_imported_arch(arch) -> bool:
    """True for ``tv:NAME``, ``timm:NAME`` and ``pkg.module:factory`` (every arch with a colon)."""
    return isinstance(arch, str) and ":" in arch


def arch_kind(arch: str) -> str:
    """``"torchvision"``, ``"timm"`` or ``"code"`` (a ``pkg.module:factory`` import path)."""
    if arch.startswith(TV_PREFIX):
        return "torchvision"
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    return "code"


def allowed_modules() -> set[str]:
    """The modules ``$OOD_ALLOW_CODE`` names (comma-separated; ``*`` = any): the app loads a
    checkpoint of a ``pkg.module:factory`` model only when its module is listed there."""
    return {m.strip() for m in os.environ.get(ALLOW_CODE_ENV, "").split(",") if m.strip()}


def code_allowed(arch: str) -> bool:
    allowed = allowed_modules()
    return "*" in allowed or arch.split(":", 1)[0] in allowed


# --------------------------------------------------------------------------- building the network
def _torchvision_net(name: str, num_classes: int) -> nn.Module:
    import torchvision.models as tvm

    known = tvm.list_models(tvm)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
        raise OODCoreError(f"torchvision has no classification model {name!r}"
                           + (f"; similar: {', '.join(close)}" if close else "")
                           + " (`python -c 'import torchvision; print(torchvision.models.list_models("
                             "torchvision.models))'` lists them)")
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _timm_net(name: str, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise OODCoreError("timm models need timm: pip install 'ood-lab[timm]' (or pip install timm)") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:  # timm's "Unknown model"
        raise OODCoreError(f"timm cannot build {name!r}: {' '.join(str(e).split())[:200]}") from None


def _code_net(path: str) -> nn.Module:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise OODCoreError(f"--model {path!r}: write your own model as pkg.module:factory (a function returning "
                           "an nn.Module), tv:NAME (torchvision) or timm:NAME")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise OODCoreError(f"--model {path!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OODCoreError(f"--model {path!r}: {module_name} has no callable {attr!r}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise OODCoreError(f"--model {path!r}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def final_linear_name(net: nn.Module) -> str:
    """The name of the last ``nn.Linear`` registered in ``net``: its classifier head."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise OODCoreError(f"{type(net).__name__} has no nn.Linear classifier; name the feature layer with "
                           "--feature-layer (scores that need the head's weight then do not apply)")
    return names[-1]


class ImportedModel(nn.Module):
    """A network from torchvision, timm or your code, returning ``ModelOutput(features, logits)``.

    ``forward(x)``: ``x`` in [0, 1] is normalised with the spec's mean/std, run through the
    network, and the features are read by a hook on the head's input (or on ``feature_layer``'s
    output), flattened. ``model.head`` is the network's final linear layer (not a second copy:
    the weights live once, under ``net.``).
    """

    def __init__(self, net: nn.Module, spec: dict):
        super().__init__()
        self.net = net
        self.spec = dict(spec)
        modules = dict(net.named_modules())
        head_name = spec["head_layer"]
        if head_name not in modules:
            raise OODCoreError(f"the network has no layer {head_name!r}")
        object.__setattr__(self, "head", modules[head_name])  # an alias: not registered twice
        layer = spec.get("feature_layer") or head_name
        if layer not in modules:
            sample = ", ".join(list(modules)[1:12])
            raise OODCoreError(f"--feature-layer {layer!r}: the network has no such layer (some of its layers: "
                               f"{sample}, ...)")
        self._feature_module = modules[layer]
        self._features_at_input = not spec.get("feature_layer") or layer == head_name
        pre = spec.get("preprocess") or {}
        mean, std = pre.get("mean"), pre.get("std")
        c = int(spec["input_shape"][0])
        channels = len(mean) if mean else c
        self.register_buffer("mean", torch.tensor(mean if mean else [0.0] * channels).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std if std else [1.0] * channels).view(1, -1, 1, 1),
                             persistent=False)
        self._crop = int(pre["crop"]) if pre.get("crop") else None

    def _to_network_input(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] benchmark inputs -> what the network was trained on: grey repeated to the
        network's channels, resized to its crop (a preset's 32 x 32 images for a 224 model;
        image folders are already loaded at the crop), then normalised."""
        if x.dim() != 4:
            return x
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if self._crop and tuple(x.shape[-2:]) != (self._crop, self._crop):
            x = torch.nn.functional.interpolate(x, size=(self._crop, self._crop), mode="bilinear",
                                                align_corners=False, antialias=x.shape[-1] > self._crop)
        return (x - self.mean) / self.std

    def forward(self, x) -> ModelOutput:
        captured = []
        if self._features_at_input:
            handle = self._feature_module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        else:
            handle = self._feature_module.register_forward_hook(lambda _m, _a, out: captured.append(out))
        x = self._to_network_input(x)
        try:
            out = self.net(x)
        finally:
            handle.remove()
        if isinstance(out, (tuple, list)):  # e.g. (logits, aux)
            out = out[0]
        elif isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        if not captured:
            raise OODCoreError("the feature layer was not called by the network's forward; pick another "
                               "--feature-layer")
        return ModelOutput(captured[-1].flatten(1), out)


def build_imported(arch: str, num_classes: int, input_shape, head_layer: str | None = None,
                   feature_layer: str | None = None, preprocess: dict | None = None,
                   allow_code: bool = False) -> ImportedModel:
    """The :class:`ImportedModel` of a spec (random weights; :func:`load_weights` fills them).

    ``head_layer`` defaults to the network's last ``nn.Linear``. ``allow_code`` must be True to
    build a ``pkg.module:factory`` model (it imports and runs that module)."""
    num_classes = whole(num_classes, "num_classes", 1, MAX_CLASSES)
    input_shape = check_input_shape(input_shape)
    kind = arch_kind(arch)
    if kind == "torchvision":
        net = _torchvision_net(arch[len(TV_PREFIX):], int(num_classes))
    elif kind == "timm":
        net = _timm_net(arch[len(TIMM_PREFIX):], int(num_classes))
    else:
        if not (allow_code or code_allowed(arch)):
            raise CheckpointError(f"this model is built by your code {arch!r}, which loading it would import and run: "
                                  f"pass --allow-code on the command line, or set {ALLOW_CODE_ENV}="
                                  f"{arch.split(':', 1)[0]} (the app, a notebook) to allow that module")
        net = _code_net(arch)
    head_layer = head_layer or final_linear_name(net)
    spec = {"arch": arch, "num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape],
            "head_layer": head_layer, "feature_layer": feature_layer, "preprocess": dict(preprocess or {})}
    return ImportedModel(net, spec)


def check_outputs(model: ImportedModel, num_classes: int) -> int:
    """Run one zero input and check the logits have ``num_classes`` columns; returns the
    feature dimension. OODCoreError naming both numbers when they differ."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *model.spec["input_shape"]))
    model.train(was_training)
    if out.logits.dim() != 2 or out.logits.shape[1] != num_classes:
        raise OODCoreError(f"the model outputs {tuple(out.logits.shape[1:])} logits per sample but the dataset has "
                           f"{num_classes} classes; use weights trained on these classes")
    return int(out.features.shape[1])


# --------------------------------------------------------------------------- weights
def _open_weights(path: Path):
    """``path`` opened after checking it is a regular file (not a FIFO, device or folder, also
    behind a link) within the checkpoint size limit; OODCoreError naming ``--weights`` otherwise."""
    from .data.limits import MAX_CHECKPOINT_BYTES_ENV, checkpoint_byte_limit

    class _WeightsError(OODCoreError):
        pass

    try:
        return open_regular(path, _WeightsError, max_bytes=checkpoint_byte_limit(),
                            limit_hint=f"raise the limit with the environment variable {MAX_CHECKPOINT_BYTES_ENV}")
    except _WeightsError as e:
        raise OODCoreError(f"--weights {e}") from None


def _read_state_dict(path: Path) -> dict:
    _open_weights(path).close()  # a FIFO or /dev/zero is refused before any reader touches it
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise OODCoreError(".safetensors weights need safetensors: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise OODCoreError(f"--weights {path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") \
                from None
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise OODCoreError(f"--weights {path}: expected a .pth/.pt state dict or a .safetensors file")
    try:
        with _open_weights(path) as f:
            if zipfile.is_zipfile(f):  # torch.load does not check the archive's CRCs
                f.seek(0)
                damage = zip_damage(f)
                if damage is not None:
                    raise OODCoreError(f"--weights {path}: damaged: archive member {damage[0]}: {damage[1]}; "
                                       "the file changed after it was written (a bad download or copy)")
            f.seek(0)
            obj = torch.load(f, map_location="cpu", weights_only=True)  # never runs code from the file
    except OODCoreError:
        raise
    except Exception as e:
        detail = " ".join(str(e).split())[:200]
        raise OODCoreError(f"--weights {path}: not a weights-only loadable state dict ({detail}); save it with "
                           "torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model", "model_state_dict"):  # training scripts often wrap it
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OODCoreError(f"--weights {path}: holds no state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _torchvision_weights(arch: str, enum_name: str):
    import torchvision.models as tvm

    name = arch[len(TV_PREFIX):]
    try:
        enum = tvm.get_model_weights(name)
    except (KeyError, ValueError):
        raise OODCoreError(f"torchvision has no weights for {name!r}") from None
    choices = [w.name for w in enum] + ["DEFAULT"]
    if enum_name not in choices:
        raise OODCoreError(f"--weights {enum_name!r}: {name} has {', '.join(choices)} (or pass a .pth/.safetensors file)")
    return enum[enum_name] if enum_name != "DEFAULT" else enum.DEFAULT


def preprocess_from_weights(arch: str, weights: str | None) -> dict:
    """Resize, crop, mean and std from a torchvision weights enum (``IMAGENET1K_V1``, ...), or
    from the architecture's default weights when ``weights`` is a file or None (a fine-tuned
    torchvision model is usually fed like its pretrained start); ImageNet's otherwise."""
    if arch_kind(arch) != "torchvision":
        return dict(IMAGENET_PREPROCESS)
    is_enum = weights is not None and not Path(weights).suffix
    try:
        w = _torchvision_weights(arch, weights if is_enum else "DEFAULT")
    except OODCoreError:
        if is_enum:
            raise
        return dict(IMAGENET_PREPROCESS)
    t = w.transforms()
    first = lambda v: int(v[0]) if isinstance(v, (list, tuple)) else int(v)  # noqa: E731
    return {"resize": first(t.resize_size), "crop": first(t.crop_size), "mean": [float(m) for m in t.mean],
            "std": [float(s) for s in t.std]}


def load_weights(model: ImportedModel, weights: str, download: bool = False) -> str:
    """Fill ``model`` from ``weights`` (a file, or a torchvision weights enum name); returns a
    description for the checkpoint's metadata. OODCoreError with the missing and unexpected
    keys when the file does not fit the architecture."""
    arch = model.spec["arch"]
    path = Path(weights).expanduser()
    if path.suffix:  # a file
        state = _read_state_dict(path)
        source = f"file {path.name}"
    else:
        if arch_kind(arch) != "torchvision":
            raise OODCoreError(f"--weights {weights!r}: a weights enum name works for tv: models; pass a file for {arch}")
        w = _torchvision_weights(arch, weights)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        if not cached.is_file() and not download:
            raise OODCoreError(f"--weights {weights}: not in torch's cache ({cached}); pass --download to fetch "
                               f"{w.url}, or download it elsewhere and pass the file")
        try:
            state = w.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # no internet, a corrupt cache file
            raise OODCoreError(f"--weights {weights}: cannot fetch {w.url} ({' '.join(str(e).split())[:200]})") from None
        source = f"torchvision {type(w).__name__}.{w.name}"
    missing, unexpected = _key_mismatch(model.net, state)
    if missing or unexpected:
        raise OODCoreError(f"--weights {weights}: does not fit {arch}: "
                           + "; ".join(f"{what} keys {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                                       for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shapes (e.g. a 1000-class head against 10 classes)
        detail = " ".join(str(e).split())[:300]
        raise OODCoreError(f"--weights {weights}: does not fit {arch} with {model.spec['num_classes']} classes: "
                           f"{detail}") from None
    return source


def _key_mismatch(net: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    want = set(net.state_dict())
    return sorted(want - set(state)), sorted(set(state) - want)

