"""The core: what an intervention is and where it acts, with no evaluation framework.

``spec`` (what to do to which heads), ``arch`` (where the per-head site is in each family),
``prompting`` (one codec per checkpoint: render, encode, token scopes, plans), ``scopes``
(character spans -> token positions) and ``hooks`` (the ``intervene`` context manager).
Nothing here imports lmms-eval or lm-eval.
"""
