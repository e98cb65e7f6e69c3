"""ood_core: training, scoring, geometry and metrics for out-of-distribution detection.

Public API::

    model, meta = ood_core.load_checkpoint("checkpoints/ce_digits.pt")
    features, logits = model(x)                       # eval mode
    bench = ood_core.load_benchmark("digits", known=(0, 1, 2, 3, 4, 5))
    result = ood_core.evaluate(model, bench)          # .report, .scores, .table()
    trained = ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=30, seed=0))
    ood_core.save_checkpoint("my.pt", trained.model, trained.meta)
    outs = ood_core.extract_benchmark_outputs(model, bench)   # once; reused by scores and geometry
    geo = ood_core.geometry.geometry_summary(model, bench, outputs=outs)
    pca = ood_core.projection.project_benchmark(model, bench, "pca", outputs=outs)
    job = ood_core.jobs.start_training("ce", "toy2d", out_path="runs/ce_toy2d.pt")  # background
    ig = ood_core.attribution.integrated_gradients(model, x, "energy")

Submodules: ``geometry`` (Jacobian norms, neural collapse, subspaces, class geometry),
``projection`` (2-D PCA/UMAP maps, disk cache), ``jobs`` (training in a background thread:
progress, cancel, safe save), ``landscape`` (decision and score grids for 2-D inputs) and
``attribution`` (Integrated Gradients of an OOD score).
"""
__version__ = "0.1.0"

from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, IMAGE_OOD_SETS, REAL_OOD_SETS, Benchmark, load_benchmark, load_user_ood
from .errors import CheckpointError, DataError, OODCoreError, TrainingCancelled, TrainingDiverged
from .evaluate import Evaluation, evaluate, extract_benchmark_outputs, extract_outputs
from .methods import METHODS, get_method
from .metrics import auroc, aupr_in, aupr_out, fpr_at_95_tpr, ood_metrics
from .models import ModelOutput, build_model
from .scores import SCORES, make_score
from .train import TrainConfig, TrainResult, train

from . import attribution, geometry, jobs, landscape, projection  # noqa: E402,F401
from . import recipes  # noqa: E402,F401  (registers the methods and their scores)

__all__ = [
    "load_checkpoint", "save_checkpoint", "DATASETS", "IMAGE_OOD_SETS", "REAL_OOD_SETS", "Benchmark",
    "load_benchmark", "load_user_ood", "CheckpointError", "DataError", "OODCoreError", "TrainingCancelled", "TrainingDiverged",
    "Evaluation", "evaluate", "extract_benchmark_outputs", "extract_outputs", "attribution", "geometry", "jobs",
    "landscape", "projection", "METHODS", "get_method", "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr",
    "ood_metrics", "ModelOutput", "build_model", "SCORES", "make_score", "TrainConfig", "TrainResult", "train",
]
