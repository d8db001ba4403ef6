"""Streamlit helpers shared by the pages: session defaults, the sidebar, cached models.

Lives beside app.py, not in core/, because it imports streamlit. Pages call these; core never does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path

import streamlit as st

from core.data.formats import demo_dataset_path, list_workspace_datasets, load_dataset_file, load_uploaded, workspace_dataset_path
from core.data.preference import load_any_dataset, load_uploaded_any
from core.download import DownloadSpec
from core.hardware import detect
from core.llamacpp import LlamaCppChoice, load_chat_model
from core.memory import ModelArch, arch_from_source
from core.models import EMBEDDED_NAME, ModelLoadError, ModelSource, hub_weights_present, load_config, load_model
from core.runs import (
    METRICS_FILE,
    RunStatus,
    create_run,
    create_run_from_dict,
    launch,
    list_runs,
    log_tail,
    read_new_metrics,
    read_status,
    stop,
)
from core.runs.eta import estimate, machine_busy
from core.runs.spec import spec_fields
from core.runs.status import state_label

SOURCE_LABELS = {
    "embedded": f"Embedded default ({EMBEDDED_NAME})",
    "local": "Local folder",
    "hub": "Hugging Face Hub id",
    "gguf": "GGUF file",
}


def init_session_defaults() -> None:
    st.session_state.setdefault("active_model", ModelSource().as_dict())


def active_model_source() -> ModelSource:
    return ModelSource.from_dict(st.session_state.get("active_model") or {})


@st.cache_resource(max_entries=3, show_spinner=False)
def _load_cached(source_json: str):
    return load_model(ModelSource.from_dict(json.loads(source_json)))


def cached_model(source: ModelSource):
    """Load through core.models once per source; at most three models stay in memory."""
    return _load_cached(json.dumps(source.as_dict(), sort_keys=True))


@st.cache_resource(max_entries=2, show_spinner=False)
def _load_llamacpp(path: str, mtime: float):  # noqa: ARG001 - mtime: a rewritten file is loaded again
    return load_chat_model(path)


def cached_chat_model(choice):
    """A torch model (ModelSource) through core.models, or a GGUF file (LlamaCppChoice) through llama.cpp."""
    if isinstance(choice, LlamaCppChoice):
        path = Path(choice.path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        try:
            return _load_llamacpp(str(path), path.stat().st_mtime)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
    return cached_model(choice)


@st.cache_resource(show_spinner=False)
def cached_hardware():
    return detect()


def render_hardware() -> None:
    hw = cached_hardware()
    st.caption(f"**Hardware** · {hw.summary}")
    flags = [f"bf16 {'✓' if hw.bf16 else '✗'}", f"4-bit {'✓' if hw.bnb_4bit else '✗'}", f"Unsloth {'✓' if hw.unsloth else '✗'}"]
    st.caption(" · ".join(flags))
    for note in hw.notes:
        st.caption(f"ℹ️ {note}")


def render_model_selector() -> None:
    """Choose the active model; the choice is kept in session_state and holds on every page."""
    current = active_model_source()
    st.caption(f"**Active model** · {current.label} ({current.kind})")
    with st.expander("Change model", expanded=False):
        kinds = list(SOURCE_LABELS)
        kind = st.selectbox("Source", kinds, index=kinds.index(current.kind), format_func=SOURCE_LABELS.get, key="sidebar_model_kind")
        ref = ""
        if kind != "embedded":
            placeholder = {"local": "/path/to/model-folder", "hub": "Qwen/Qwen2.5-0.5B-Instruct", "gguf": "/path/to/model.gguf"}[kind]
            ref = st.text_input("Path or id", value=current.ref if kind == current.kind else "", placeholder=placeholder,
                                key="sidebar_model_ref")
        trust = st.checkbox("Trust remote code", value=current.trust_remote_code, key="sidebar_model_trust",
                            help="Runs Python code from the model repository. Only for authors you trust.")
        if st.button("Use this model", key="sidebar_model_apply"):
            try:
                chosen = ModelSource(kind=kind, ref=ref.strip(), trust_remote_code=trust)
            except ValueError as exc:
                st.error(str(exc))
                return
            try:
                with st.spinner(f"Reading {chosen.label}…"):
                    if chosen.kind == "hub":  # a Hub id: its config alone (no weights); the download is a job

                        load_config(chosen)
                    else:
                        info = cached_model(chosen).info
                        st.success(f"Loaded {info.name}: {info.parameters / 1e6:.1f} M parameters, {info.dtype}")
            except ModelLoadError as exc:
                st.error(str(exc))
                return
            st.session_state["active_model"] = chosen.as_dict()
            st.rerun()
    if current.kind == "hub":
        render_hub_download(current)


def render_hub_download(source: ModelSource) -> None:
    """Whether the active Hub model's weights are here; if not, a button that starts the download job, and its state."""
    if hub_weights_present(source):
        st.caption("Weights: downloaded (Hub cache)")
        return
    latest = next((r for r in list_runs("download") if (r.spec.get("model") or {}).get("ref") == source.ref), None)
    if latest and latest.status.is_active:
        st.caption(f"⬇️ {latest.status.message or latest.status.state} · run {latest.run_id}")
        return
    if latest and latest.status.state == "failed":
        st.caption(f"Last download failed: {latest.status.error}")
    st.caption("Weights: not downloaded yet (configs and tokenizer are enough for Budget, Decide, Template and the pre-flight; "
               "a train / evaluate / merge job downloads them as its first stage).")
    if st.button("⬇️ Download weights", key="sidebar_download"):
        start_run(DownloadSpec(model=source.as_dict()), "download_run")
        st.rerun()


def render_sidebar() -> None:
    with st.sidebar:
        render_model_selector()
        render_hardware()


# ---------------------------------------------------------------- job pages (merge / prune / distill)
# Generic helpers for pages that launch a job and watch it: choose a model, start a run, follow it live,
# send its result to Chat / Evaluate. The run folder is the only state; a refresh reattaches to it.

MODEL_CHOICES = ("Active model", "Active model + trained adapter", "Embedded default", "Local folder", "Hugging Face Hub id", "GGUF file")
_REF_KINDS = {"Local folder": "local", "Hugging Face Hub id": "hub", "GGUF file": "gguf"}
_REF_PLACEHOLDERS = {"local": "/path/to/model-folder", "hub": "org/model", "gguf": "/path/to/model.gguf"}


def trained_adapter_folders() -> dict[str, str]:
    """Adapters of finished training runs, newest first: label -> folder."""
    found = {}
    for run in list_runs("train"):
        adapter = run.path / "adapter"
        if run.status.state in ("succeeded", "stopped") and (adapter / "adapter_config.json").is_file():
            found[f"{run.run_id} ({run.status.state})"] = str(adapter)
    return found


def model_picker(label: str, key: str, *, default_choice: int | str = 0, allow_adapter: bool = True, help: str | None = None,
                 adapter: str | None = None, ref: str | None = None, extra_choices: tuple[str, ...] = ()) -> ModelSource | str | None:
    """A model source from widgets (None while incomplete). Keys are prefixed with `key`.

    `default_choice` is an index or a choice label; `adapter` / `ref` prefill the adapter folder and the path (e.g.
    a result another page handed over). A page's own `extra_choices` (e.g. Chat's llama.cpp GGUF) are offered after
    the shared ones; picking one returns its label for the page to handle."""
    choices = [c for c in MODEL_CHOICES if allow_adapter or "adapter" not in c] + list(extra_choices)
    index = choices.index(default_choice) if isinstance(default_choice, str) else min(default_choice, len(choices) - 1)
    choice = st.selectbox(label, choices, index=index, key=f"{key}_choice", help=help)
    if choice in extra_choices:
        return choice
    if choice == "Active model":
        return active_model_source()
    if choice == "Embedded default":
        return ModelSource()
    if choice == "Active model + trained adapter":
        adapters = trained_adapter_folders()
        options = list(adapters) + ["Folder path…"]
        preset = next((n for n, folder in enumerate(adapters.values()) if folder == adapter), len(adapters) if adapter else 0)
        picked = st.selectbox("Adapter", options, index=preset, key=f"{key}_adapter_pick")
        path = adapters.get(picked) or st.text_input("Adapter folder", value=adapter or "", key=f"{key}_adapter_path",
                                                     placeholder="/path/to/adapter")
        return active_model_source().with_adapter(path.strip()) if path and path.strip() else None
    kind = _REF_KINDS[choice]
    text = st.text_input("Hub id" if kind == "hub" else "Path", value=ref or "", key=f"{key}_ref", placeholder=_REF_PLACEHOLDERS[kind])
    trust = remote_code_checkbox(f"{key}_trust") if kind in ("local", "hub") else False
    return ModelSource(kind, text.strip(), trust_remote_code=trust) if text.strip() else None


def remote_code_checkbox(key: str) -> bool:
    """The opt-in for a model's own Python code, on every widget group that names a folder or Hub id (off by default:
    a Hub repo's *.py files are then neither downloaded nor run)."""
    return st.checkbox("Trust remote code", value=False, key=key,
                       help="Downloads and runs the Python files of the model repository (custom architectures). "
                            "Only for authors you trust.")


@st.cache_data(show_spinner=False, max_entries=16)
def _arch_dict(source_json: str) -> dict:
    return arch_from_source(ModelSource.from_dict(json.loads(source_json))).as_dict()


def cached_arch(source: ModelSource):
    """core.memory's ModelArch of a model source, read from its config once per source."""
    return ModelArch.from_dict(_arch_dict(json.dumps(source.as_dict(), sort_keys=True)))


TRAIN_RECIPE = "train_recipe"  # the hand-off to the Train page: {field: value} its form starts from
TRAIN_RECIPE_ORIGIN = "train_recipe_origin"  # (that recipe, where it came from): shown above the form
TRAIN_RUN = "train_run_id"  # the run the Train page shows (its ?run= in the URL)
EVAL_HANDOFF = "eval_handoff"  # "📊 Evaluate it": the model folder the Evaluate page opens on (read once)


def send_recipe_to_train(recipe: dict, origin: str, *, model: ModelSource | None = None) -> None:
    """Every page's hand-off to Train: the form starts from `recipe` (and `model` becomes the active model), the Train
    page says where it came from, and the user lands on its form rather than on the run it showed before."""
    recipe = dict(recipe)
    st.session_state[TRAIN_RECIPE] = recipe
    st.session_state[TRAIN_RECIPE_ORIGIN] = (recipe, origin)
    if model is not None:
        st.session_state["active_model"] = model.as_dict()
    st.session_state.pop(TRAIN_RUN, None)
    st.switch_page("app_pages/train.py")


def time_estimate(kind: str, spec, rows: int | None = None):
    """The line shown before a job's Start button: about how long it takes on this machine (core.runs.eta, from the
    workspace's finished runs) and, when other programs hold the cores, a 'machine busy' note. `spec`: a spec
    dataclass or its spec.yaml mapping; `rows`: the rows the page counted where the spec leaves the size open."""
    data = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(spec or {})
    summaries = list_runs()
    found = estimate(kind, data, summaries, rows)
    st.caption(found.text)
    if busy := machine_busy(sum(1 for r in summaries if r.status.state == "running")):
        st.warning(busy)
    return found


def start_run(spec, key: str, *, query_param: str | None = None):
    """Create the run folder from a spec (a dataclass, or a spec.yaml mapping with its `kind`), launch its worker, and
    remember it for this page (in session_state[key], and in the URL's `query_param` so a refresh or a shared link
    reopens it)."""
    run_dir = create_run_from_dict(spec) if isinstance(spec, dict) else create_run(spec)
    launch(run_dir)
    remember_run(run_dir, key, query_param=query_param)
    return run_dir


def remember_run(run_dir, key: str, *, query_param: str | None = None) -> None:
    st.session_state[key] = str(run_dir)
    if query_param:
        st.query_params[query_param] = run_dir.name


def run_selector(kind: str, key: str, label: str = "Run"):
    """Pick one of this kind's runs (the page's latest launch first). Returns its folder or None."""
    runs = list_runs(kind)
    if not runs:
        st.info(f"No {kind} runs yet in this workspace.")
        return None
    labels = {str(r.path): f"{r.path.name} · {r.status.state}" for r in runs}
    paths = list(labels)
    current = st.session_state.get(key)
    if current and current not in paths:
        st.warning(f"Run {Path(current).name} no longer exists (its folder was deleted or moved); showing the newest {kind} run.")
    index = paths.index(current) if current in paths else 0
    # The browser keeps a keyed selectbox's old option labels; a key that follows the labels makes a finished
    # run stop reading "running" there (the choice itself carries over through st.session_state[key]).
    labels_key = zlib.crc32("\n".join(labels.values()).encode())
    chosen = st.selectbox(label, paths, index=index, key=f"{key}_select_{labels_key:08x}", format_func=labels.get)
    st.session_state[key] = chosen
    return Path(chosen)


def run_metrics(run_dir) -> list[dict]:
    """All metrics rows of a run, read incrementally by byte offset across reruns."""
    cache = st.session_state.setdefault("_job_metrics", {})
    offset, rows = cache.get(str(run_dir), (0, []))
    new, offset = read_new_metrics(run_dir / METRICS_FILE, offset)
    rows = rows + new
    cache[str(run_dir)] = (offset, rows)
    return rows


def _render_status(run_dir, render_body, header=None):
    if not Path(run_dir).is_dir():  # deleted (or moved) while this page showed it: say so, stop polling
        st.warning(f"Run {Path(run_dir).name} no longer exists: its folder {run_dir} was deleted or moved.")
        return RunStatus(state="failed", error="the run folder was deleted")
    status = read_status(run_dir)  # the one read of this render: the header, the status line and the body all show it
    if header is not None:
        header(run_dir, status)
    elapsed = f" · {status.run_seconds:.0f} s" if status.run_seconds else ""
    st.markdown(f"**{state_label(status)}**{elapsed} — {status.message}")
    if status.is_active:
        st.progress(status.progress)
        if st.button("Stop", key=f"stop_{run_dir.name}"):
            stop(run_dir)
    if status.state == "failed":
        st.error(status.error or "The job failed.")
        with st.expander("Log tail", expanded=True):
            st.code(log_tail(run_dir) or "(empty log)")
    render_body(run_dir, status, run_metrics(run_dir))
    return status


@st.fragment(run_every=2)
def _live_status(run_dir, render_body, header, shown_state: str) -> None:
    status = _render_status(run_dir, render_body, header)
    if status.state != shown_state:
        # queued -> running -> stopping -> final: the whole page reruns, so what sits outside this panel (the run
        # pickers, the runs table) shows the new state too; a final state hands over to the static view (no polling)
        st.rerun()


def live_run(run_dir, render_body, header=None) -> None:
    """Status, progress, stop and log tail of a run; polls every 2 s while it is active.

    render_body(run_dir, status, metrics_rows) draws the page-specific part (charts, results); header(run_dir, status),
    if given, draws the run's header above the status line from the same status (inside the polling panel, so it never
    shows a state the panel has left).
    """
    status = read_status(run_dir)
    if status.is_active:
        _live_status(run_dir, render_body, header, status.state)
    else:
        _render_status(run_dir, render_body, header)


def send_model_buttons(folder: str, key: str) -> None:
    """Open a result folder (a model, or an adapter of the active model) on the Chat or Evaluate page."""
    role = "adapter" if (Path(folder) / "adapter_config.json").is_file() else "model_path"
    c1, c2 = st.columns(2)
    if c1.button("💬 Chat with it", key=f"{key}_to_chat"):
        st.session_state[f"chat_{role}"] = str(folder)
        st.switch_page("app_pages/chat.py")
    if c2.button("📊 Evaluate it", key=f"{key}_to_eval"):
        st.session_state[f"eval_{role}"] = str(folder)
        st.session_state[EVAL_HANDOFF] = str(folder)  # the Evaluate page opens this model's own report (or its form)
        st.switch_page("app_pages/evaluate.py")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------- forms generated from a spec dataclass


def _float_format(value: float) -> tuple[str, float]:
    """A display format and step for a float widget: small rates in scientific notation."""
    if value and abs(value) < 1e-2:
        return "%.2e", abs(value) / 10
    return "%.3f", 0.01 if abs(value or 0) < 10 else 1.0


def limit_problem(info, value) -> str | None:
    """Why `value` cannot run for this field (outside its limits), or None."""
    if info.min is not None and value < info.min:
        return f"{info.name} must be at least {info.min:g}: {value:g} will not run"
    if info.max is not None and value > info.max:
        return f"{info.name} must be at most {info.max:g}: {value:g} will not run"
    return None


def spec_widget(info, value, key: str):
    """One widget chosen by the field's type / choices / limits, labelled by its name and helped by its metadata."""
    label = info.name.replace("_", " ")
    if info.choices:
        options = list(info.choices)
        return st.selectbox(label, options, index=options.index(value) if value in options else 0, help=info.help, key=key)
    if info.type == "bool":
        return st.checkbox(label, value=bool(value), help=info.help, key=key)
    if info.type in ("int", "float"):
        # No min / max for the widget itself: the browser would refuse an out-of-range value silently and keep the old
        # one in the spec while showing the new one. The value is kept as typed and refused here, beside the field; the
        # spec refuses it too (check_limits), so nothing out of range can start.
        if info.type == "int":
            typed = st.number_input(label, value=int(value), step=1, help=info.help, key=key)
        else:
            fmt, step = _float_format(float(value))
            typed = st.number_input(label, value=float(value), step=step, format=fmt, help=info.help, key=key)
        if (problem := limit_problem(info, typed)) is not None:
            st.error(problem)
        return typed
    if info.type == "list":
        text = st.text_input(label, value=", ".join(map(str, value or [])), help=info.help + " (comma separated)", key=key)
        return [part.strip() for part in text.split(",") if part.strip()]
    return st.text_input(label, value="" if value is None else str(value), help=info.help, key=key)


def spec_form(cls, defaults=None, key_prefix: str = "spec", *, skip: tuple[str, ...] = (), columns: int = 3,
              overrides: dict[str, dict] | None = None) -> dict:
    """Widgets for every field of a spec dataclass (core.runs.spec_fields), grouped by `metadata["group"]`;
    advanced fields of each group sit in an expander. Returns {field: value} for `spec_from_dict`.

    `defaults` is an instance or a dict; a widget keeps what the user typed across reruns (its session key is
    f"{key_prefix}_{field}"), so delete those keys to re-apply new defaults (e.g. a recipe from the Decide page).
    `overrides` changes a field's FieldInfo for this form only (e.g. a maximum sized to the hardware found).
    """
    if dataclasses.is_dataclass(defaults):
        defaults = dataclasses.asdict(defaults)
    defaults = dict(defaults or {})
    overrides = overrides or {}
    infos = [dataclasses.replace(i, **overrides.get(i.name, {})) for i in spec_fields(cls) if i.name not in skip and i.type != "dict"]
    values: dict = {}
    groups: dict[str, list] = {}
    for info in infos:
        groups.setdefault(info.group, []).append(info)
    for group, members in groups.items():
        basic = [i for i in members if not i.advanced]
        advanced = [i for i in members if i.advanced]
        if basic:
            st.markdown(f"**{group.capitalize()}**")
            cols = st.columns(columns)
            for n, info in enumerate(basic):
                with cols[n % columns]:
                    values[info.name] = spec_widget(info, defaults.get(info.name, info.default), f"{key_prefix}_{info.name}")
        if advanced:
            with st.expander(f"Advanced · {group}", expanded=False):
                cols = st.columns(columns)
                for n, info in enumerate(advanced):
                    with cols[n % columns]:
                        values[info.name] = spec_widget(info, defaults.get(info.name, info.default), f"{key_prefix}_{info.name}")
    # The form's own limits (an override may be narrower than the spec's, e.g. processes sized to this machine).
    problems = [p for info in infos if info.name in values and info.type in ("int", "float")
                and (p := limit_problem(info, values[info.name])) is not None]
    st.session_state[f"{key_prefix}__problems"] = problems
    return values


def form_problems(key_prefix: str) -> list[str]:
    """The values of the last spec_form(key_prefix) run that cannot run (already shown beside their fields)."""
    return list(st.session_state.get(f"{key_prefix}__problems") or [])


def reset_spec_form(cls, key_prefix: str) -> None:
    """Forget the form's widget values so the next spec_form() shows its defaults again."""
    for info in spec_fields(cls):
        st.session_state.pop(f"{key_prefix}_{info.name}", None)


# ---------------------------------------------------------------- datasets


@st.cache_data(max_entries=8, show_spinner="Reading dataset…")
def cached_dataset_file(path: str, mtime: float, preference: bool = False,  # noqa: ARG001 - mtime keys the cache on the file's version
                        mapping: str = ""):
    """A dataset file read once per version; `mapping`: a column mapping as sorted JSON (core.data.formats' `mapping`)."""
    if mapping:  # the user named the columns: read with them (a mapping names SFT fields, never preference ones)
        return load_dataset_file(path, mapping=json.loads(mapping))
    if preference:  # a page that shows preference pairs: such a file is read as one (core.data.preference)
        return load_any_dataset(path)
    return load_dataset_file(path)


def upload_digest(upload) -> str:
    """sha256 of an uploaded file, computed once per upload (Streamlit's file_id), not on every rerun."""
    digests = st.session_state.setdefault("_upload_digests", {})
    if upload.file_id not in digests:
        digests[upload.file_id] = hashlib.sha256(upload.getbuffer()).hexdigest()
    return digests[upload.file_id]


@st.cache_data(max_entries=4, show_spinner="Reading upload…")
def _dataset_upload(name: str, digest: str,  # noqa: ARG001 - digest keys the cache; the bytes are not re-hashed
                    _data: bytes, preference: bool = False,
                    mapping: str = ""):
    if mapping:
        return load_uploaded(name, _data, mapping=json.loads(mapping))
    if preference:
        return load_uploaded_any(name, _data)
    return load_uploaded(name, _data)


def cached_dataset_upload(upload, preference: bool = False, mapping: dict | None = None):
    """A dataset file the user uploaded, parsed once per content (keyed by its digest); errors name the uploaded file."""
    return _dataset_upload(upload.name, upload_digest(upload), upload.getvalue(), preference, _mapping_key(mapping))


def _mapping_key(mapping: dict | None) -> str:
    return json.dumps(mapping, sort_keys=True) if mapping else ""


def choose_dataset(key: str, *, demo_splits: tuple[str, ...] = ("train",), allow_path: bool = False, label: str = "Source",
                   preference: bool = False, mapping: dict | None = None):
    """Pick a dataset: the demo task (train / eval), a curated workspace dataset, a path or Hub id, or an upload.
    Returns core.data's loaded dataset (cached by file version or upload digest), or None while incomplete.
    preference=True: a file of preference pairs (or KTO rows) is read as one (rows in core.data.preference's form).
    mapping: the user's column mapping for a file or upload ({field: column}, core.data.formats), None for detection."""
    demos = {f"Demo: support tickets{f' ({split})' if len(demo_splits) > 1 else ''}": split for split in demo_splits}
    sources = list(demos) + ["Workspace dataset"] + (["Path or Hub id"] if allow_path else []) + ["Upload a file"]
    choice = st.radio(label, sources, horizontal=True, key=f"{key}_source")
    if choice in demos:
        path = demo_dataset_path(demos[choice])
        return cached_dataset_file(str(path), path.stat().st_mtime)
    if choice == "Workspace dataset":
        names = list_workspace_datasets()
        if not names:
            st.info("No curated datasets in the workspace yet: export one from the Data page.")
            return None
        path = workspace_dataset_path(st.selectbox("Workspace dataset", names, key=f"{key}_workspace_name"))
        return cached_dataset_file(str(path), path.stat().st_mtime, preference, _mapping_key(mapping))
    if choice == "Path or Hub id":
        text = st.text_input("JSONL / JSON / CSV / Parquet file, a saved `datasets` folder, or a Hub id", key=f"{key}_path").strip()
        if not text:
            return None
        path = Path(text).expanduser()
        return cached_dataset_file(str(path) if path.exists() else text, path.stat().st_mtime if path.exists() else 0.0, preference,
                                   _mapping_key(mapping))
    upload = st.file_uploader("JSONL, JSON, CSV or Parquet", type=["jsonl", "json", "csv", "parquet"], key=f"{key}_upload")
    return cached_dataset_upload(upload, preference, mapping) if upload else None


def task_rows_note(task: dict | None) -> None:
    """Which task rows a verdict was scored on (core.transform_eval.TaskData); a warning when it is the demo task."""
    if task:
        (st.warning if task.get("origin") == "demo" else st.caption)(f"Task rows: {task['note']} · `{task['path']}`")
