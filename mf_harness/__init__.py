"""mf-harness: modality following of multimodal LLMs under attention-head interventions."""

__version__ = "0.1.0"
