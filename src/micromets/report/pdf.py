"""HTML → PDF with headless Chromium (the browser that prints the report exactly as it shows it).

Chromium is looked up on ``PATH`` as ``chromium``, ``chromium-browser``, ``google-chrome`` or
``google-chrome-stable``. When none is installed the report stays HTML only and one warning says so.
Flags: ``--headless --no-sandbox --disable-gpu`` plus the ones that keep it off the network and out of the user's
profile (``--disable-background-networking --disable-component-update --disable-sync --no-first-run`` and a
throw-away ``--user-data-dir``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_warned_missing = False


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on ``PATH``, or None."""
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_flags(user_data_dir: str) -> list[str]:
    """The command-line flags every headless Chromium run of micromets uses."""
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={user_data_dir}",
    ]


def html_to_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 180.0) -> bool:
    """Print ``html_path`` to ``pdf_path`` (A4, page size from the HTML's ``@page`` rule).

    Returns True when the PDF was written; False, with a warning, when Chromium is absent (warned once per
    process) or fails — the HTML is never touched, so no result is lost.
    """
    global _warned_missing
    browser = find_chromium()
    if browser is None:
        if not _warned_missing:
            warnings.warn("Chromium not found on PATH: writing the HTML report only, no PDF", RuntimeWarning,
                          stacklevel=2)
            _warned_missing = True
        return False
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    tmp_pdf = pdf_path.with_name(pdf_path.name + ".part")
    with tempfile.TemporaryDirectory(prefix="micromets-chromium-") as profile:
        cmd = [browser, *chromium_flags(profile), "--no-pdf-header-footer",
               "--print-to-pdf-no-header", f"--print-to-pdf={tmp_pdf}",
               html_path.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc = None
    if proc is None or proc.returncode != 0 or not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
        detail = "timed out" if proc is None else f"exit code {proc.returncode}"
        warnings.warn(f"{html_path}: Chromium could not print the PDF ({detail}); the HTML report is complete",
                      RuntimeWarning, stacklevel=2)
        tmp_pdf.unlink(missing_ok=True)
        return False
    tmp_pdf.replace(pdf_path)
    return True
