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
