"""The paper's analysis: logit lens and LDAR, margin attribution, ablation, attention knockout and NSSD.

Few general functions (`lens.capture`, `lens.lens_logits`, `lens.component_logits`,
`measures.cut_edges`, the hooks) composed into the paper's measures (`measures`), then
into tables, plots and head-set spec files (`report`).
"""

from mf_harness.analysis.lens import Trace, capture, component_logits, lens_logits, readout_weights
from mf_harness.analysis.measures import (
    ablation_effects,
    cut_edges,
    final_margins,
    knockout_nssd,
    ldar_table,
    lens_and_attribution,
    nssd,
)
from mf_harness.analysis.samples import Sample, encode_samples, load_task_docs, prepare_samples

__all__ = [
    "Sample", "Trace", "ablation_effects", "capture", "component_logits", "cut_edges", "encode_samples",
    "final_margins", "knockout_nssd", "ldar_table", "lens_and_attribution", "lens_logits", "load_task_docs",
    "nssd", "prepare_samples", "readout_weights",
]
