"""How mf-harness plugs into lmms-eval 0.7.3.

lmms-eval imports this module while it builds its model registry (entry point
group ``lmms_eval.models``, declared in pyproject.toml), i.e. before any task is
resolved. Importing it does three things, each small and idempotent:

1. `manifests` registers ``intervened_hf`` and its per-family aliases (``intervened_qwen``,
   ``intervened_internvl``, ``intervened_llava``, ...): one class, `mf_harness.models.IntervenedHF`.
2. Our task folder is added to every `TaskManager`'s include path, so ``--tasks mfr``
   works with no ``--include_path`` and no environment variable (lmms-eval does not
   index plugin tasks by itself). ``--include_path`` keeps working alongside.
3. ``--use_cache`` keys on a spec file's content, not its path (`_patch_response_cache`).
5. filelock 4.3 compatibility for lmms-eval 0.7.3 (`shim_filelock_api`).
4. Exit status: lmms-eval's CLI prints a traceback and exits 0 when an evaluation
   fails. We replace the ``traceback`` name inside ``lmms_eval.__main__`` (used only
   in that error path) so a failure prints one clear message for mf-harness input
   errors (a traceback for anything else) and then exits with status 1.
"""

from __future__ import annotations

import os
import sys
import traceback as _traceback
import types

__all__ = ["manifests", "tasks_dir", "install"]

MODEL_CLASS = "mf_harness.models.IntervenedHF"


def tasks_dir() -> str:
    """The folder of mf-harness's task YAMLs (the repo's ``tasks/`` or the installed copy)."""
    import mf_harness.tasks as t

    return os.path.dirname(os.path.abspath(t.__file__))


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    from mf_harness.arch import MODEL_NAMES

    install()
    return [ModelManifest(model_id=MODEL_NAMES[0], simple_class_path=MODEL_CLASS, aliases=MODEL_NAMES[1:])]


def _patch_task_manager() -> None:
    from lmms_eval.tasks import TaskManager

    if getattr(TaskManager.__init__, "_mf_harness", False):
        return
    original = TaskManager.__init__

    def __init__(self, *args, **kwargs):
        names = ["verbosity", "include_path"]
        for name, value in zip(names, args):
            kwargs.setdefault(name, value)
        args = ()
        ours = tasks_dir()
        inc = kwargs.get("include_path")
        if inc is None:
            inc = [ours]
        else:
            inc = [inc] if isinstance(inc, str) else list(inc)
            if not any(os.path.abspath(p) == ours for p in inc):
                inc.append(ours)
        kwargs["include_path"] = inc
        _patch_exit_status()  # lmms_eval.__main__ may have been imported after this module
        original(self, *args, **kwargs)

    __init__._mf_harness = True  # type: ignore[attr-defined]
    TaskManager.__init__ = __init__


class _ExitOnFailure:
    """Stands in for the ``traceback`` module inside ``lmms_eval.__main__``."""

    def __getattr__(self, name):
        return getattr(_traceback, name)

    @staticmethod
    def print_exc(*args, **kwargs):
        exc = _user_error(sys.exc_info()[1])
        if exc is not None:
            # start on a fresh line: a progress bar may be mid-line on stderr
            print(f"\nmf-harness: error: {exc}", file=sys.stderr)
        else:
            _traceback.print_exc(*args, **kwargs)
            exc = sys.exc_info()[1]
            print(f"\nmf-harness: error: evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        raise SystemExit(1)


def _user_error(exc: BaseException | None):
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


def _patch_exit_status() -> None:
    main = sys.modules.get("lmms_eval.__main__")
    if main is not None and not isinstance(getattr(main, "traceback", None), _ExitOnFailure):
        main.traceback = _ExitOnFailure()


def _spec_content_key(model_args):
    """``model_args`` with ``intervention=<file>`` replaced by what the file says (its spec hash)."""
    from lmms_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    if not args.get("intervention"):
        return model_args
    from mf_harness.spec import spec_from_model_args

    spec, rest = spec_from_model_args(args)
    return {**rest, "spec_hash": spec.spec_hash}


def _patch_response_cache() -> None:
    """lmms-eval's ``--use_cache`` keys responses on the ``--model_args`` text; with
    ``intervention=heads.json`` that is the file's path, so editing the file in place would
    silently reuse stale answers. Key on the spec's content instead."""
    try:
        from lmms_eval.caching.response_cache import ResponseCache
    except ImportError:  # pragma: no cover
        return
    create = ResponseCache.__dict__["create"]
    if getattr(create, "_mf_harness", False):
        return
    original = create.__func__

    def patched(cls, cache_root, *, model="", model_args="", **kwargs):
        return original(cls, cache_root, model=model, model_args=_spec_content_key(model_args), **kwargs)

    patched._mf_harness = True
    wrapped = classmethod(patched)
    wrapped._mf_harness = True  # type: ignore[attr-defined]
    ResponseCache.create = wrapped


def shim_filelock_api() -> bool:
    """Give lmms-eval 0.7.3 the ``filelock._api`` module that filelock 4.3 removed; True if installed.

    lmms-eval 0.7.3's ``evaluator._enable_reentrant_filelocks`` (run inside every
    ``simple_evaluate``) does ``import filelock._api`` and patches ``FileLockMeta.__call__``
    there, reading ``_UNSET_FILE_MODE``. filelock 4.3.1 (2026-11-23) moved both into
    ``filelock._core`` (``FileLockMeta``, ``UNSET_FILE_MODE``), so every lmms-eval run fails
    with ``ModuleNotFoundError: No module named 'filelock._api'``. This registers a module
    ``filelock._api`` that exposes the same objects under the old names (the class itself, so
    lmms-eval's patch lands on the real metaclass). Where ``filelock._api`` exists (filelock
    < 4.3) it does nothing. Undo with `unshim_filelock_api`.
    """
    try:
        import filelock._api  # noqa: F401
        return False
    except ImportError:
        pass
    from filelock import _core

    api = types.ModuleType("filelock._api", "mf-harness alias of filelock._core for lmms-eval 0.7.3")
    api.FileLockMeta = _core.FileLockMeta
    api.BaseFileLock = _core.BaseFileLock
    api._UNSET_FILE_MODE = _core.UNSET_FILE_MODE
    api._mf_harness = True
    sys.modules["filelock._api"] = api
    return True


def unshim_filelock_api() -> None:
    """Remove the alias `shim_filelock_api` registered (nothing else)."""
    if getattr(sys.modules.get("filelock._api"), "_mf_harness", False):
        del sys.modules["filelock._api"]


def install() -> None:
    shim_filelock_api()
    _patch_task_manager()
    _patch_exit_status()
    _patch_response_cache()
