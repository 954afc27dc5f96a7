"""Every change mf-harness makes to upstream code, in one place: named, documented, explicit, reversible.

Nothing here runs on import. Two groups are installed explicitly:

* ``lmms`` (`install_lmms`): when lmms-eval loads our plugin (its model registry imports
  `mf_harness.lmms.plugin.manifests`), when our CLI starts, and before our code calls
  ``simple_evaluate``;
* ``processors`` (`install_processors`): before a checkpoint's processor is loaded
  (`mf_harness.lmms.loading.load_model`, the tiny builders).

Each patch is a function that applies itself and returns its undo (or None when it has nothing
to do on this installation); `install` records the undo, `uninstall` runs it. Every patch has a
test (``tests/test_patches.py``) that fails if the upstream code under it changes. Versions:
lmms-eval 0.7.3, transformers 5.23-5.24, filelock 4.2-4.3.

| name | upstream | what it covers |
|---|---|---|
| ``task_include_path`` | lmms-eval 0.7.3 ``TaskManager.__init__`` | plugin tasks are never indexed (``LMMS_EVAL_PLUGINS`` adds them after the index is built): add our task folder to every TaskManager, beside ``--include_path`` |
| ``exit_status`` | lmms-eval 0.7.3 ``__main__`` | a failed evaluation prints a traceback and exits 0: print one line for input errors and exit 1 |
| ``response_cache_spec_key`` | lmms-eval 0.7.3 ``ResponseCache.create`` | ``--use_cache`` keys on the ``--model_args`` text, so an edited spec file would reuse stale answers: key on the spec's content |
| ``filelock_api_alias`` | lmms-eval 0.7.3 + filelock 4.3 | ``simple_evaluate`` imports ``filelock._api``, which filelock 4.3 removed |
| ``processor_without_torchvision`` | transformers 5 ``ProcessorMixin.get_attributes``, ``__init__`` | processors with a video sub-processor refuse to load without torchvision, even for images |
| ``smolvlm_video_optional`` | transformers 5 ``SmolVLMProcessor.__init__`` | ``video_processor`` is a required argument (None once the processor has none) |
| ``gemma4_video_optional`` | transformers 5 ``Gemma4Processor.__init__`` | ``video_processor`` is a required argument (None once the processor has none) |
| ``smolvlm_num2words`` | transformers 5 ``processing_smolvlm.num2words`` | the processor refuses to build without ``num2words`` (used only for video prompts) |
"""

from __future__ import annotations

import importlib.util
import sys
import traceback as _traceback
import types
from typing import Callable, Optional

__all__ = ["PATCHES", "GROUPS", "install", "uninstall", "installed", "install_lmms", "install_processors",
           "has_torchvision", "without_video", "user_error"]

Undo = Callable[[], None]
PATCHES: dict[str, Callable[[], Optional[Undo]]] = {}
GROUPS: dict[str, list[str]] = {"lmms": [], "processors": []}
_UNDO: dict[str, Optional[Undo]] = {}


def _patch(group: str):
    def register(fn):
        PATCHES[fn.__name__] = fn
        GROUPS[group].append(fn.__name__)
        return fn

    return register


def install(*names: str) -> list[str]:
    """Apply the named patches that are not applied yet (idempotent); return the names applied now."""
    done = []
    for name in names:
        if name not in PATCHES:
            raise KeyError(f"no patch named {name!r}; patches: {', '.join(PATCHES)}")
        if name in _UNDO:
            continue
        _UNDO[name] = PATCHES[name]()
        done.append(name)
    return done


def uninstall(*names: str) -> None:
    """Undo the named patches (all applied ones when none are named), newest first."""
    for name in reversed(list(names or _UNDO)):
        undo = _UNDO.pop(name, None)
        if undo is not None:
            undo()


def installed() -> list[str]:
    return list(_UNDO)


def install_lmms() -> list[str]:
    return install(*GROUPS["lmms"])


def install_processors() -> list[str]:
    return install(*GROUPS["processors"])


# ----------------------------------------------------------------------------------------- lmms-eval


def _tasks_dir() -> str:
    from mf_harness.lmms.plugin import tasks_dir

    return tasks_dir()


@_patch("lmms")
def task_include_path() -> Undo:
    """lmms-eval 0.7.3 never indexes a plugin's tasks: ``LMMS_EVAL_PLUGINS`` adds ``pkg.tasks`` to the
    include path only after the ``TaskManager`` has been built (``__main__.py`` ~683). Wrap
    ``TaskManager.__init__`` so every TaskManager also includes our task folder; a user's
    ``--include_path`` is kept (ours is appended)."""
    import os

    from lmms_eval.tasks import TaskManager

    original = TaskManager.__init__

    def __init__(self, *args, **kwargs):
        for name, value in zip(["verbosity", "include_path"], args):
            kwargs.setdefault(name, value)
        ours = _tasks_dir()
        inc = kwargs.get("include_path")
        if inc is None:
            inc = [ours]
        else:
            inc = [inc] if isinstance(inc, str) else list(inc)
            if not any(os.path.abspath(p) == ours for p in inc):
                inc.append(ours)
        kwargs["include_path"] = inc
        _set_exit_status()  # lmms_eval.__main__ may have been imported after the patch was installed
        original(self, **kwargs)

    TaskManager.__init__ = __init__

    def undo():
        TaskManager.__init__ = original

    return undo


class _ExitOnFailure:
    """Stands in for the ``traceback`` module inside ``lmms_eval.__main__`` (only its error path uses it)."""

    def __getattr__(self, name):
        return getattr(_traceback, name)

    @staticmethod
    def print_exc(*args, **kwargs):
        raised = sys.exc_info()[1]
        exc = user_error(raised)
        usage = cli_usage_error(raised) if exc is None else None
        if exc is not None or usage is not None:
            # start on a fresh line: a progress bar may be mid-line on stderr
            print(f"\nmf-harness: error: {exc if exc is not None else usage}", file=sys.stderr)
        else:
            _traceback.print_exc(*args, **kwargs)
            exc = sys.exc_info()[1]
            print(f"\nmf-harness: error: evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        raise SystemExit(1)


def user_error(exc: BaseException | None):
    """The `MfHarnessError` behind ``exc``, looking through causes and tenacity's RetryError
    (lmms-eval retries dataset loading, so an error in ``process_docs`` arrives wrapped)."""
    from mf_harness.errors import MfHarnessError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MfHarnessError):
            return exc
        last = getattr(exc, "last_attempt", None)  # tenacity.RetryError
        inner = last.exception() if last is not None and hasattr(last, "exception") else None
        exc = inner or exc.__cause__ or exc.__context__
    return None


def cli_usage_error(exc: BaseException | None) -> str | None:
    """One line for the errors lmms-eval's CLI raises about its own arguments (``--tasks`` names no task,
    ``--limit -2``, ``--limit 0``, a ``--model_args`` item without ``=``), which it would print as a traceback; None for
    anything else (a bug keeps its traceback)."""
    if not isinstance(exc, ValueError):
        return None
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename.replace("\\", "/"), tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    if any(name == "simple_parse_args_string" for _, name in frames):
        return ("--model_args must be key=value pairs separated by commas (lmms-eval splits on ','): join heads "
                "with '+', e.g. block=L0H1+L1H2")
    if frames and frames[-1][0].endswith("lmms_eval/__main__.py"):
        return str(exc)
    if frames and frames[-1][0].endswith("lmms_eval/api/task.py") and "did not find any docs" in str(exc):
        return "the task has no docs to evaluate (--limit 0, or an empty split): give --limit >= 1 or leave it out"
    return None


_EXIT = {"on": False}


def _set_exit_status() -> None:
    main = sys.modules.get("lmms_eval.__main__")
    if _EXIT["on"] and main is not None and not isinstance(getattr(main, "traceback", None), _ExitOnFailure):
        main._mf_harness_traceback = main.traceback
        main.traceback = _ExitOnFailure()


@_patch("lmms")
def exit_status() -> Undo:
    """lmms-eval 0.7.3's CLI (``__main__.py`` ~609) prints the traceback of a failed evaluation and
    exits 0 unless ``--verbosity DEBUG``. Replace the ``traceback`` name inside ``lmms_eval.__main__``
    (used only in that error path) so a failure prints one ``mf-harness: error:`` line for input
    errors (a traceback, then the line, for anything else) and exits 1. Applied when
    ``lmms_eval.__main__`` is imported now or later (the task-manager patch re-applies it)."""
    _EXIT["on"] = True
    _set_exit_status()

    def undo():
        _EXIT["on"] = False
        main = sys.modules.get("lmms_eval.__main__")
        if main is not None and isinstance(getattr(main, "traceback", None), _ExitOnFailure):
            main.traceback = getattr(main, "_mf_harness_traceback", _traceback)

    return undo


def spec_content_key(model_args):
    """``model_args`` with ``intervention=<file>`` replaced by what the file says (its spec hash)."""
    from lmms_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    if not args.get("intervention"):
        return model_args
    from mf_harness.core.spec import spec_from_model_args

    spec, rest = spec_from_model_args(args)
    return {**rest, "spec_hash": spec.spec_hash}


@_patch("lmms")
def response_cache_spec_key() -> Undo:
    """lmms-eval 0.7.3's ``--use_cache`` keys responses on the ``--model_args`` text; with
    ``intervention=heads.json`` that is the file's path, so editing the file in place would silently
    reuse stale answers. Key on the spec's content instead (``ResponseCache.create``)."""
    from lmms_eval.caching.response_cache import ResponseCache

    original = ResponseCache.__dict__["create"]
    create = original.__func__

    def patched(cls, cache_root, *, model="", model_args="", **kwargs):
        return create(cls, cache_root, model=model, model_args=spec_content_key(model_args), **kwargs)

    ResponseCache.create = classmethod(patched)

    def undo():
        ResponseCache.create = original

    return undo


@_patch("lmms")
def filelock_api_alias() -> Optional[Undo]:
    """lmms-eval 0.7.3's ``evaluator._enable_reentrant_filelocks`` (run inside every
    ``simple_evaluate``) does ``import filelock._api`` and patches ``FileLockMeta.__call__`` there,
    reading ``_UNSET_FILE_MODE``. filelock 4.3.1 (2026-11-23) moved both into ``filelock._core``
    (``FileLockMeta``, ``UNSET_FILE_MODE``), so every lmms-eval run failed with
    ``ModuleNotFoundError: No module named 'filelock._api'``. Register a module ``filelock._api``
    exposing the same objects under the old names (the class itself, so lmms-eval's patch lands on
    the real metaclass). Nothing to do where ``filelock._api`` exists (filelock < 4.3)."""
    try:
        import filelock._api  # noqa: F401  (only whether it exists)
        return None
    except ImportError:
        pass
    from filelock import _core

    api = types.ModuleType("filelock._api", "mf-harness alias of filelock._core for lmms-eval 0.7.3")
    api.FileLockMeta = _core.FileLockMeta
    api.BaseFileLock = _core.BaseFileLock
    api._UNSET_FILE_MODE = _core.UNSET_FILE_MODE
    sys.modules["filelock._api"] = api

    def undo():
        if sys.modules.get("filelock._api") is api:
            del sys.modules["filelock._api"]

    return undo


# -------------------------------------------------------------------------------------- processors


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class _NoVideoProcessor:
    """Stands in for a video processor that cannot exist without torchvision."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise RuntimeError("video inputs need torchvision, which is not installed")


def without_video(processor):
    """Give ``processor`` a stand-in video processor if it was loaded without one; return it.
    (SmolVLM's chat template reads ``video_processor.num_frames``.)"""
    if not has_torchvision() and getattr(processor, "video_processor", None) is None:
        processor.video_processor = _NoVideoProcessor()
    return processor


@_patch("processors")
def processor_without_torchvision() -> Optional[Undo]:
    """transformers 5 builds every *video* processor on torchvision, so processors that own one
    (Qwen2/2.5/3-VL, InternVL, LLaVA-OneVision, SmolVLM) refuse to build or load without
    torchvision, even for image+text use. Make ``ProcessorMixin.get_attributes`` drop
    ``video_processor`` when torchvision is missing; such processors then load with their PIL image
    processor (`without_video` gives a loaded one a stand-in). ``ProcessorMixin.__init__`` then drops
    a ``video_processor=None`` keyword, which it would reject as no attribute (Gemma 4's processor
    passes its argument on by keyword). Nothing to do with torchvision."""
    if has_torchvision():
        return None
    from transformers import processing_utils

    mixin = processing_utils.ProcessorMixin
    original, original_init = mixin.__dict__["get_attributes"], mixin.__init__
    get = original.__func__

    def get_attributes(cls):
        return [a for a in get(cls) if a != "video_processor"]

    def __init__(self, *args, **kwargs):
        if "video_processor" in kwargs and kwargs["video_processor"] is None:
            del kwargs["video_processor"]
        original_init(self, *args, **kwargs)

    mixin.get_attributes = classmethod(get_attributes)
    mixin.__init__ = __init__

    def undo():
        mixin.get_attributes = original
        mixin.__init__ = original_init

    return undo


def _video_optional(class_name: str, wrap: Callable) -> Optional[Undo]:
    """Replace ``transformers.<class_name>.__init__`` by ``wrap(original)``, one whose ``video_processor``
    defaults to None; nothing to do with torchvision or without that class. transformers passes the keyword
    arguments that the code object names positionally (co_varnames up to co_argcount: chat_template, ...), so
    each wrapper names upstream's parameters, in order, with upstream's defaults."""
    if has_torchvision():
        return None
    import transformers

    try:
        cls = getattr(transformers, class_name)
    except (ImportError, AttributeError):
        return None
    original = cls.__init__
    cls.__init__ = wrap(original)
    cls.__init__.__doc__ = original.__doc__

    def undo():
        cls.__init__ = original

    return undo


@_patch("processors")
def smolvlm_video_optional() -> Optional[Undo]:
    """transformers 5's ``SmolVLMProcessor.__init__(image_processor, tokenizer, video_processor, ...)``
    requires ``video_processor``; once ``processor_without_torchvision`` drops it from the processor's
    attributes, ``from_pretrained`` calls it without one. Wrap ``__init__`` so the argument defaults to
    None. Nothing to do with torchvision, or without SmolVLM."""
    def wrap(original):
        def __init__(self, image_processor=None, tokenizer=None, video_processor=None, image_seq_len=169,
                     chat_template=None, **kwargs):
            original(self, image_processor, tokenizer, video_processor, image_seq_len=image_seq_len,
                     chat_template=chat_template, **kwargs)
        return __init__

    return _video_optional("SmolVLMProcessor", wrap)


@_patch("processors")
def gemma4_video_optional() -> Optional[Undo]:
    """transformers 5's ``Gemma4Processor.__init__(feature_extractor, image_processor, tokenizer, video_processor,
    ...)`` requires ``video_processor``; once ``processor_without_torchvision`` drops it from the processor's
    attributes, ``from_pretrained`` calls it without one. Wrap ``__init__`` so the argument defaults to None (which
    ``processor_without_torchvision`` then keeps from ``ProcessorMixin.__init__``). Nothing to do with torchvision,
    or without Gemma 4."""
    def wrap(original):
        def __init__(self, feature_extractor=None, image_processor=None, tokenizer=None, video_processor=None,
                     chat_template=None, image_seq_length=280, audio_seq_length=750, audio_ms_per_token=40,
                     **kwargs):
            original(self, feature_extractor, image_processor, tokenizer, video_processor,
                     chat_template=chat_template, image_seq_length=image_seq_length,
                     audio_seq_length=audio_seq_length, audio_ms_per_token=audio_ms_per_token, **kwargs)
        return __init__

    return _video_optional("Gemma4Processor", wrap)


def _no_num2words(n, *args, **kwargs):
    raise RuntimeError("SmolVLM video prompts need the num2words package, which is not installed")


@_patch("processors")
def smolvlm_num2words() -> Optional[Undo]:
    """transformers 5's SmolVLM processor refuses to build when ``num2words`` is missing
    (``processing_smolvlm.num2words is None``); it uses it only to word video prompts. Supply a
    stand-in that raises if a video prompt is ever built. Nothing to do with num2words installed."""
    if importlib.util.find_spec("num2words") is not None:
        return None
    try:
        from transformers.models.smolvlm import processing_smolvlm
    except ImportError:
        return None
    if processing_smolvlm.num2words:
        return None
    processing_smolvlm.num2words = _no_num2words

    def undo():
        processing_smolvlm.num2words = None

    return undo
