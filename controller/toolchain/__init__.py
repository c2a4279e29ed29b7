"""Build-time tools for models: training and exporting the demo/test models (needs the ``models`` extra)."""
