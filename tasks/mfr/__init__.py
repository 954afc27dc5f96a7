"""The ``mfr`` task family: YAML configs, their Python (``mfr.py``) and data (``mfr_data.py``) side by side."""
