"""Head-set spec files shipped with mf-harness (installed as the package data ``mf_harness.interventions``)."""

from pathlib import Path

INTERVENTIONS_DIR = Path(__file__).resolve().parent
