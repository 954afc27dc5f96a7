"""The lmms-eval adapter: the model class, the fast multi-spec engine, the plugin entry point and
the upstream patches (each a named, reversible function in `mf_harness.lmms.patches`)."""
