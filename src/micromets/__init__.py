"""micromets: find micrometastases in lymph-node whole-slide images and stage the patient.

The package reads like the pipeline (see docs/DESIGN.md):
slide → tissue → tiles → heatmap → lesions → measure → node → patient → report.
"""

__version__ = "0.1.0"
