"""The lmms-eval integration points of `mf_harness.lmms_plugin`."""

import json

import mf_harness.lmms_plugin as plugin


def test_response_cache_keys_on_spec_content_not_path(tmp_path):
    from lmms_eval.caching.response_cache import ResponseCache

    plugin.install()
    spec = tmp_path / "heads.json"

    def fingerprint(heads, root):
        spec.write_text(json.dumps({"schema_version": 1, "block": heads}))
        cache = ResponseCache.create(str(tmp_path / root), model="intervened_qwen",
                                     model_args=f"pretrained=embedded,intervention={spec}", task_dict={})
        return cache._model_fingerprint_hash

    a = fingerprint(["L1H1"], "a")
    assert fingerprint(["L1H1"], "b") == a  # same content, same key
    assert fingerprint(["L1H2"], "c") != a  # same path, edited content: a new key
    # inline specs are content already and pass through unchanged
    assert plugin._spec_content_key("pretrained=embedded,block=L1H1") == "pretrained=embedded,block=L1H1"


def test_install_is_idempotent():
    from lmms_eval.tasks import TaskManager

    plugin.install()
    init = TaskManager.__init__
    plugin.install()
    assert TaskManager.__init__ is init


def test_filelock_shim_lets_lmms_eval_patch_the_real_metaclass(tmp_path):
    """lmms-eval 0.7.3 imports ``filelock._api`` in every ``simple_evaluate``; filelock 4.3 removed it.
    This fails when either upstream changes: lmms-eval stops importing it (drop the shim) or filelock
    moves the metaclass again (the alias would point at nothing)."""
    import inspect

    import filelock
    from datasets.utils import _filelock as datasets_filelock
    from lmms_eval import evaluator

    assert "filelock._api" in inspect.getsource(evaluator._enable_reentrant_filelocks)
    plugin.shim_filelock_api()
    import filelock._api as api

    assert api.FileLockMeta is type(filelock.FileLock)
    evaluator._enable_reentrant_filelocks()  # what simple_evaluate runs: must not raise
    path = str(tmp_path / "x.lock")
    # lmms-eval's fix took effect: one instance per lock path across the two FileLock classes
    assert filelock.FileLock(path) is datasets_filelock.FileLock(path)
