"""mf-harness's lmms-eval task configs (installed as the package ``mf_harness.tasks``)."""
