"""Case report: per patient one self-contained HTML file and the same as PDF (see :mod:`.case_report`)."""

from micromets.report.case_report import find_patient_dirs, render_report_html, write_report

__all__ = ["find_patient_dirs", "render_report_html", "write_report"]
