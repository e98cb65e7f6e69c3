"""Models: look at a checkpoint, or train a new one in the app.

Three tabs, of which only the open one runs. Tab "Loaded checkpoint": the checkpoint chosen in
the sidebar (``state.CHECKPOINT_KEY``) with its model card, ID accuracy, the OOD metric table and
one score histogram; the raw metadata is drawn when its expander is opened.

Tab "Train a new model": dataset, method (only those that fit the dataset), epochs, learning
rate, seed and output file; Start runs :func:`ood_core.jobs.start_training` in a background
thread and returns at once, so this page and every other page stay usable while it trains.
The job object lives in ``st.session_state[state.TRAINING_JOB_KEY]`` (this browser session only). An
``st.fragment`` polls it every ``POLL_S`` seconds and redraws only itself: progress bar, loss
curve, validation per epoch, Pause / Step one epoch / Resume / Cancel and, for 2-D data
(toy2d), the decision and score landscape after every epoch (:mod:`ood_core.app.live_training`,
shared with the Lessons page). When the run ends the fragment reruns the whole app once, so the
sidebar lists the new file.

Computation lives in :mod:`ood_core.jobs`, :mod:`ood_core.landscape` and the figure builders of
:mod:`ood_core.app` (training form: :mod:`ood_core.app.training`); this page only lays out widgets and plots.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core.app import cached, figures, live_training, state, tables, training, widgets

DEFAULTS_FOR_KEY = "training_defaults_for"  # (method, dataset) the option widgets were filled for
FORM_KEY = "training_form"  # a copy of the options, restored after a visit to another page
# Option widgets kept across page switches (Streamlit drops a page's widget state when it is
# left); "Overwrite" is deliberately not among them: it must be ticked again.
FORM_WIDGETS = ("train_dataset", "train_method", "train_epochs", "train_lr", "train_seed",
                "train_landscape_score", "train_slow_motion", "train_out_name")
DEFAULT_DATASET = "toy2d"
DEFAULT_SLOW_MOTION_S = 0.3

st.title("Models")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown(
        "**Loaded checkpoint** shows the model picked in the sidebar: what it was trained on, its accuracy on "
        "the known classes, and how well each OOD score separates the ID test split from every OOD set "
        "(all scores: high = in-distribution).\n\n"
        "**Train a new model** trains a method on an embedded dataset right here. Training minimises the "
        "method's loss over mini-batches; for the cross-entropy baseline (`ce`):")
    st.latex(r"L = -\log \operatorname{softmax}(f(x))_y = -f_y(x) + \log \sum_k e^{f_k(x)}")
    st.markdown(
        "The loss curve should fall and the validation accuracy rise; a loss that turns NaN stops the run "
        "(lower the learning rate).\n\n"
        "On **toy2d** (2-D inputs) the page redraws after every epoch the *decision regions* "
        r"$\arg\max_k f_k(x)$ (left) and an OOD score over the plane (right), by default the energy "
        r"$E(x) = \log\sum_k e^{f_k(x)}$ (high = ID), with the training points on top.\n\n"
        "**What to look for:** with `ce` the regions are unbounded wedges and the score keeps *growing* away "
        "from the data (the logits of a ReLU network grow linearly along rays), so points far from every class "
        "look *more* in-distribution than the training data: this is why OOD detection by softmax or energy "
        "fails far away (AUROC below 0.5 on the far-synthetic sets `ring` and `uniform-box`). Switch the landscape score to `mahalanobis` (fitted "
        "on the training features) and the score falls away from the classes instead. Other methods change "
        "the geometry itself: `l2norm` and `movr` normalise the features, which makes the energy flat along "
        "rays; `ib` learns class centres.")

# Only the open tab runs (and is sent to the browser): the other two would cost a first render
# their widgets and computations. The tab opens on the training form when there is no checkpoint
# yet, or when this session's run is under way or just ended; otherwise on the loaded checkpoint.
TAB_KEY = "models_tab"
TAB_LOADED, TAB_TRAIN, TAB_IMPORT = "Loaded checkpoint", "Train a new model", "Import a model"
_job = st.session_state.get(state.TRAINING_JOB_KEY)
_job_news = _job is not None and st.session_state.get(live_training.ANNOUNCED_KEY) != _job.job_id
st.session_state.setdefault(TAB_KEY, TAB_TRAIN if _job_news or not state.chosen_checkpoint() else TAB_LOADED)
tab_loaded, tab_train, tab_import = st.tabs([TAB_LOADED, TAB_TRAIN, TAB_IMPORT], key=TAB_KEY, on_change="rerun")


# =============================================================================== training
def select_checkpoint(path: str) -> None:
    """Button callback: make ``path`` the sidebar's chosen checkpoint and open the tab that shows
    it (runs before the rerun)."""
    state.choose_checkpoint(path)
    st.session_state[TAB_KEY] = TAB_LOADED


def fill_option_defaults(method: str, dataset: str) -> None:
    """Set the option widgets to ``recommended_config(method)`` and the default file name
    whenever the method or dataset changes (or the widgets were cleared by a page switch)."""
    if st.session_state.get(DEFAULTS_FOR_KEY) == (method, dataset) and "train_epochs" in st.session_state:
        return
    defaults = training.option_defaults(method, dataset)
    st.session_state.update(train_epochs=defaults["epochs"], train_lr=defaults["lr"], train_seed=defaults["seed"],
                            train_out_name=defaults["out_name"], train_overwrite=False)
    st.session_state[DEFAULTS_FOR_KEY] = (method, dataset)


def training_part() -> None:
    """The "Train a new model" tab: options, Start, and the job panel."""
    folder = widgets.checkpoint_dir()
    for key, value in st.session_state.get(FORM_KEY, {}).items():
        st.session_state.setdefault(key, value)  # back from another page: the options as they were
    st.session_state.setdefault("train_dataset", DEFAULT_DATASET)
    st.session_state.setdefault("train_slow_motion", DEFAULT_SLOW_MOTION_S)
    c1, c2 = st.columns(2)
    dataset = c1.selectbox("Dataset", training.dataset_names(), key="train_dataset", format_func=training.dataset_label)
    bench = widgets.or_error(cached.benchmark_by_name_cached, dataset, state.data_root_for(dataset))
    if bench is None:
        return
    methods = training.methods_for(bench)
    if st.session_state.get("train_method") not in methods:
        st.session_state.pop("train_method", None)  # e.g. a multi-label method after switching to toy2d
    method = c2.selectbox("Method", methods, key="train_method",
                          format_func=training.method_label,
                          help="Only the methods for this dataset's task (and input kind) are listed")
    fill_option_defaults(method, dataset)

    c3, c4, c5 = st.columns(3)
    epochs = c3.number_input("Epochs", min_value=1, max_value=1000, step=1, key="train_epochs")
    lr = c4.number_input("Learning rate", min_value=1e-6, max_value=10.0, step=1e-4, format="%g", key="train_lr")
    seed = c5.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="train_seed",
                           help="Same seed, same options, same device: the same weights")
    plane = tuple(bench.input_shape) == (2,)
    slow_motion, landscape_score = 0.0, None
    if plane:
        c6, c7 = st.columns(2)
        scores = training.landscape_scores(method, bench)
        if st.session_state.get("train_landscape_score") not in scores:
            st.session_state["train_landscape_score"] = training.default_landscape_score(scores)
        landscape_score = c6.selectbox("Landscape score (high = ID)", scores, key="train_landscape_score",
                                       help="The method's scores; those fitted on training data (mahalanobis, "
                                            "knn, ...) are refitted after every epoch")
        slow_motion = c7.slider("Slow motion: at least this many seconds per epoch", 0.0, 2.0, step=0.05,
                                key="train_slow_motion",
                                help="toy2d trains an epoch in milliseconds; a pause after each epoch lets you "
                                     "watch the landscape form. The weights are the same either way.")
    name = st.text_input("Output file name", key="train_out_name",
                         help=f"Saved into `{folder}`, the folder the sidebar lists (${widgets.CHECKPOINT_ENV})")
    st.session_state[FORM_KEY] = {k: st.session_state[k] for k in FORM_WIDGETS if k in st.session_state}

    overwrite = False
    out_path, blocked = training.output_path(folder, name)
    if blocked:
        st.warning(blocked)
    if out_path is not None and out_path.exists():
        st.warning(f"`{out_path.name}` already exists in `{folder}`; training would replace it. Tick "
                   f"**Overwrite** to replace it, or choose another name such as `{training.free_path(out_path).name}`.")
        overwrite = st.checkbox(f"Overwrite `{out_path.name}`", key="train_overwrite")
        if not overwrite:
            blocked = "the file exists"

    job = st.session_state.get(state.TRAINING_JOB_KEY)
    busy = job is not None and not job.finished
    st.caption(f"Training device: **{training.device_name()}** (cuda > mps > cpu, the first available). "
               "Training runs in the background: other pages stay usable meanwhile.")
    clicked = st.button("Start training", type="primary", key="train_start", disabled=busy or blocked is not None,
                        help="Cancel the current run first" if busy else None)
    if clicked and not busy and blocked is None:
        job = widgets.or_error(training.start, method, bench, out_path, epochs=epochs, lr=lr, seed=seed,
                               overwrite=overwrite, landscape_score=landscape_score, min_epoch_seconds=slow_motion)
        if job is not None:
            st.session_state[state.TRAINING_JOB_KEY] = job
            st.rerun()  # redraw the form with Start disabled while the job runs

    job = st.session_state.get(state.TRAINING_JOB_KEY)
    if job is not None:
        st.divider()
        live_training.show_job(state.TRAINING_JOB_KEY, "train", on_done=select_checkpoint)


# =============================================================================== loaded checkpoint
def loaded_part() -> None:
    """The "Loaded checkpoint" tab (stops the script when no checkpoint can be read)."""
    path, version, model, meta = widgets.require_checkpoint()
    result = widgets.or_stop(cached.evaluation_cached, path, version, widgets.user_ood())

    report, scores, rows = result["report"], result["scores"], result["table"]
    st.caption(f"Checkpoint `{path}`")

    label, value = tables.reported_id_quality(report)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(label, "n/a" if value is None else f"{value:.1%}", help="On the ID test split (known classes only)")
    c2.metric("Method", str(meta.get("method")))
    c3.metric("Dataset", str((meta.get("dataset") or {}).get("name")))
    c4.metric("Device (auto)", training.device_name(), help="The device torch picks here: cuda > mps > cpu")

    left, right = st.columns(2)
    with left:
        st.subheader("Model card")
        widgets.static_table(tables.model_card(meta))
    with right:
        st.subheader("Headline results (mean per OOD group)")
        widgets.static_table(tables.headline_metrics(report), index=True)
    # drawn only when opened: four JSON trees (the whole training history) weigh on a first render
    raw = st.expander("Raw metadata", key="models_raw", on_change="rerun")
    if raw.open:
        t_sum, t_model, t_train, t_versions = raw.tabs(["Summary", "Model spec", "Train config", "Library versions"])
        t_sum.json(tables.metadata_summary(meta), expanded=1)
        t_model.json(meta.get("model") or {})
        t_train.json(meta.get("train_config") or {})
        t_versions.json(meta.get("versions") or {})

    st.subheader("OOD detection metrics")
    table = tables.metric_table(rows)
    # the grid even when short: the table a researcher sorts (every score on every set)
    widgets.show_table(table, "metric_table", f"{Path(path).stem}_ood_metrics", grid=True)
    st.caption(tables.TABLE_CAPTION)

    st.subheader("Score distributions")
    score_options = tables.score_names(scores)
    ood_options = tables.ood_set_names(report)
    for key, opts in (("score", score_options), ("ood_set", ood_options)):
        if st.session_state.get(key) not in opts:
            st.session_state.pop(key, None)  # e.g. another checkpoint with other OOD sets was chosen
    s1, s2 = st.columns(2)
    score = widgets.url_selectbox("Score (high = ID)", score_options, key="score", param="score", container=s1)
    ood_set = widgets.url_selectbox("OOD set", ood_options, key="ood_set", param="ood", container=s2,
                                    format_func=lambda n: f"{n} ({report['groups'].get(n, '?')})")
    fig = figures.histogram_figure(scores[f"id/{score}"], scores[f"{ood_set}/{score}"], score, ood_set)
    widgets.show_figure(fig, "score_hist", f"{Path(path).stem}_{score}_{ood_set}")
    m = report["ood"][ood_set][score]
    st.caption(f"AUROC {m['auroc']:.3f} · FPR95 {m['fpr95']:.3f} · AUPR-In {m['aupr_in']:.3f} · "
               f"AUPR-Out {m['aupr_out']:.3f}")


def import_part() -> None:
    """The "Import a model" tab: a torchvision/timm architecture, its weights, a dataset."""
    folder = widgets.checkpoint_dir()
    st.markdown("A model trained elsewhere becomes a lab checkpoint that every page reads: features are the "
                "input of its final linear layer, its preprocessing is stored with it. (Your own `nn.Module`: "
                "`ood-lab import --model pkg.module:factory` on the command line.)")
    c1, c2 = st.columns(2)
    arch = c1.text_input("Architecture", value="tv:resnet18", key="import_arch",
                         help=f"tv:NAME (any torchvision classification model) or timm:NAME; e.g. "
                              f"{training.IMPORT_EXAMPLES}")
    dataset = c2.text_input("Dataset", value="", key="import_dataset", placeholder="imagefolder:/path/to/images",
                            help="imagefolder:DIR (one sub-folder per class; DIR/train and DIR/test when present) "
                                 "or a preset such as cifar10 (needs the data root)")
    weights = st.file_uploader("Weights (state dict)", type=["pth", "pt", "safetensors"], key="import_weights",
                               help="Read with the weights-only loader: a file that holds code is refused. "
                                    "Without weights the model keeps its random initialisation.")
    c3, c4 = st.columns(2)
    resize = c3.number_input("Resize (shorter side; 0 = the weights' default)", 0, 2048, 0, key="import_resize")
    crop = c4.number_input("Crop (input size; 0 = the weights' default)", 0, 2048, 0, key="import_crop")
    name = st.text_input("Save as", value="imported.pt", key="import_out_name",
                         help=f"Saved into `{folder}`, the folder the sidebar lists")
    out_path, blocked = training.output_path(folder, name)
    why = training.import_refusal(arch.strip())
    if why:
        st.info(why)
    if blocked:
        st.warning(blocked)
    overwrite = False
    if out_path is not None and out_path.exists():
        overwrite = st.checkbox(f"Overwrite `{out_path.name}`", key="import_overwrite")
    if st.button("Import", key="import_start", type="primary",
                 disabled=bool(why or blocked or not dataset.strip() or (out_path and out_path.exists()
                                                                          and not overwrite))):
        bar = st.progress(0.0, text="Extracting features…")
        try:
            path = widgets.save_weights_upload(weights) if weights is not None else None
            meta = training.import_to_checkpoint(
                arch.strip(), dataset.strip(), out_path, weights=str(path) if path else None, resize=int(resize),
                crop=int(crop), data_root=state.data_root_setting(), overwrite=overwrite,
                progress=lambda s, done, total, cached: bar.progress(min(1.0, done / max(total, 1)),
                                                                    text=f"features of {s}: {done}/{total}"))
        except widgets.OODCoreError as e:
            bar.empty()
            st.error(str(e))
            return
        bar.empty()
        st.success(f"Saved `{out_path.name}`: {meta['imported']['arch']} ({meta['imported']['weights']}), "
                   f"{meta['imported']['feature_dim']}-d features.")
        st.button(f"Open {out_path.name}", key="import_open", on_click=select_checkpoint, args=(str(out_path),))


# The checkpoint tab last: it stops the script when there is no readable checkpoint.
if tab_train.open:
    with tab_train:
        training_part()
if tab_import.open:
    with tab_import:
        import_part()
if tab_loaded.open:
    with tab_loaded:
        loaded_part()
