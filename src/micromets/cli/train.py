"""`micromets train`: train a tumour-patch detector with torch and export ONNX + model card (needs `.[train]`)."""

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app


def _path_at_mpp(spec: str, option: str) -> tuple[Path, float]:
    from micromets.errors import MicrometsError

    path, sep, mpp = spec.rpartition("@")
    try:
        value = float(mpp)
    except ValueError:
        value = 0.0
    if not sep or value <= 0:
        raise MicrometsError(f"{option} {spec!r}: write PATH@MPP, e.g. data/tiles@0.5 (µm/px of the images)")
    return Path(path), value


def _held_out_report(path: Path) -> dict:
    """A bench/tissue_heldout.py result, checked before any training."""
    from micromets.errors import MicrometsError

    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise MicrometsError(f"--held-out {path}: not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(report, dict) or not isinstance(report.get("summary"), dict) or "seeds" not in report:
        raise MicrometsError(f"--held-out {path}: not a bench/tissue_heldout.py result (no 'summary' and 'seeds')")
    return report


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FOLDER, help="Output model folder: model.onnx + model.json (the card)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="'tissue-classes': the bundled opt-in model src/micromets/models/tissue-classes (issue 14): 7 tissue classes from every source under --data-root (micromets.train.tissue_data; uses --out, --data-root, --steps, --width, --seed, --patch-px, --input-mpp, --name, --version, --held-out; held-out numbers: bench/tissue_heldout.py). 'lymph-node-he': the shipped default's binary recipe, data from --data-root (see micromets.train.recipes). 'coarse-screen': the 2 µm/px screening model of --mode fast (micromets.train.coarse; uses only --out, --data-root, --steps, --width, --seed, --name, --version). 'tumour-nuclei': the nucleus classifier of the H&E tumour-cell count, src/micromets/models/nuclei (micromets.train.nuclei; uses --out, --data-root, --steps, --width, --seed, --name, --version; run from the repository it measures the new model on the hand-counted tiles of bench/data)."),
    data_root: Path = typer.Option(Path("../shared/data"), "--data-root", help="Folder of the real data for --recipe."),
    folder: list[str] = typer.Option([], "--folder", help="Folder-per-class tiles as PATH@MPP (class folders tumor*/normal*; MPP = µm/px of the images). Repeatable."),
    idc: Optional[str] = typer.Option(None, "--idc", help="Breast IDC layout <patient>/<0|1>/*.png as PATH@MPP (≈4 µm/px)."),
    pcam: Optional[Path] = typer.Option(None, "--pcam", help="Folder with camelyonpatch_level_2_split_<split>_{x,y}.h5 (0.972 µm/px)."),
    pcam_split: str = typer.Option("train", "--pcam-split", help="PCam split to train on: train, valid or test."),
    pcam_limit: Optional[int] = typer.Option(None, "--pcam-limit", help="Use only the first N PCam patches."),
    wsi: list[str] = typer.Option([], "--wsi", help="SLIDE:ANNOTATION.xml (ASAP XML, level-0 px outlines = tumour). Repeatable."),
    wsi_patches: int = typer.Option(200, "--wsi-patches", help="Patches sampled per class and slide for --wsi."),
    input_mpp: float = typer.Option(0.5, "--input-mpp", callback=validate.MPP, help="Model resolution in µm/px; every dataset is resampled to it."),
    patch_px: int = typer.Option(96, "--patch-px", help="Model patch side in pixels at --input-mpp (heatmap cell = patch_px × input_mpp µm)."),
    family: str = typer.Option("cnn", "--family", help="cnn (PatchNet on stain-normalised pixels) or morphometry (nuclear features → logistic regression)."),
    steps: int = typer.Option(300, "--steps", help="Training batches (64 augmented crops each) per fit."),
    width: int = typer.Option(16, "--width", help="Channels of the CNN's first stage (speed ∝ width²)."),
    stain_jitter: Optional[str] = typer.Option(None, "--stain-jitter", callback=validate.STAIN_JITTER, help="SIGMA,VECTOR_SIGMA[,CAST] of the H&E stain augmentation: each stain amount (OD) × U(1-SIGMA, 1+SIGMA), stain-vector components + N(0, VECTOR_SIGMA), and (CAST) each stain adds U(-CAST, CAST) of itself to the residual channel, a colour cast. Default: the recipe's own (0.25,0.05; tissue-classes 0.5,0.1). docs/model.md compares them on the held-out protocol."),
    seed: int = typer.Option(0, "--seed", help="Random seed (training is deterministic for a seed)."),
    held_out: Optional[Path] = typer.Option(None, "--held-out", callback=validate.IN_FILE, help="--recipe tissue-classes: a bench/tissue_heldout.py result (JSON) to write into the card's metrics.held_out and known_failure_modes."),
    cv_groups: str = typer.Option("", "--cv-groups", help="Comma-separated groups (slides/patients) held out one at a time for the held-out metrics; empty = none."),
    exclude_groups: str = typer.Option("", "--exclude-groups", help="Comma-separated groups (slides/patients) left out of training entirely, e.g. to keep a slide unseen for phantom tests."),
    name: str = typer.Option("micromets-cnn", "--name", help="Model name for the card."),
    version: str = typer.Option("0.1.0", "--version", help="Model version for the card."),
    licence: str = typer.Option("Apache-2.0 (weights); see training_data for data licences", "--licence", help="Licence line for the card."),
) -> None:
    """Train a tumour-vs-normal patch detector (CNN with torch on the CPU, or nuclear morphometry), export it to
    ONNX and write its model card.

    Every dataset states its µm/px and is resampled to --input-mpp. Splits are by group (slide or patient, never
    by patch): with --cv-groups each group is held out in turn and the pooled out-of-fold AUC, sensitivity at 95 %
    specificity and confusion at probability 0.5 go into the card, then the final model is fitted on everything.
    Images are stain-normalised (Macenko, one estimate per group, to the reference in micromets.normalise) and
    augmented (random crops, 8 dihedral transforms, H&E stain jitter, brightness/contrast, blur).
    """
    from micromets.errors import MicrometsError
    from micromets.train import data, recipes
    from micromets.train.augment import STAIN_JITTER
    from micromets.train.build import train_and_export

    samples, training_data = [], []
    checks = None
    if recipe == "coarse-screen":
        from micromets.train.coarse import train_coarse

        card = train_coarse(data_root, out, steps=steps, width=width, seed=seed, name=name, version=version,
                            command="micromets train " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                            log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"wrote {out / 'model.onnx'} and {out / 'model.json'} ({card['training']['wall_s']:.0f} s)")
        return
    if recipe == "tumour-nuclei":
        from micromets.train.nuclei import train_nuclei

        hand_counts = Path("bench/data/he_tumour_nuclei_hand.json")  # measured when run from the repository
        hand_counts = hand_counts if hand_counts.is_file() else None

        card = train_nuclei(data_root, out, steps=steps, width=width, seed=seed, name=name, version=version,
                            command="micromets train " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                            hand_counts=hand_counts,
                            log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"wrote {out / 'model.onnx'} and {out / 'model.json'} ({card['training']['wall_s']:.0f} s)")
        return
    if recipe == "tissue-classes":
        from micromets.train import tissue_data, tissue_fit

        held_out_report = _held_out_report(held_out) if held_out else None
        tissue_set = tissue_data.build(data_root, patch_px, input_mpp)
        card = tissue_fit.export_tissue_model(
            tissue_set, out, data_root, steps=steps, seed=seed, width=width, patch_px=patch_px, input_mpp=input_mpp,
            name=name, version=version, command="micromets train " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
            held_out=held_out_report, stain_jitter=stain_jitter or tissue_fit.TISSUE_STAIN_JITTER,
            log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"wrote {out / 'model.onnx'} and {out / 'model.json'} ({card['training']['wall_s']:.0f} s)")
        return
    if recipe is not None:
        if recipe != "lymph-node-he":
            raise MicrometsError(f"--recipe {recipe!r}: choose 'lymph-node-he', 'tissue-classes', 'tumour-nuclei' or "
                                 "'coarse-screen'")
        if not (data_root / "camelyon16_patches").is_dir():
            raise MicrometsError(f"--data-root {data_root}: no camelyon16_patches folder there")
        samples += recipes.lymph_node_he(data_root, input_mpp, patch_px)
        training_data += recipes.TRAINING_DATA
        checks = lambda det: {"unseen_stain_tiles": recipes.unseen_tile_check(det, data_root)}  # noqa: E731
    for spec in folder:
        path, mpp = _path_at_mpp(spec, "--folder")
        samples += data.load_folder_per_class(path, mpp, input_mpp, source=path.name)
        training_data.append({"name": path.name, "path": str(path), "mpp": mpp, "licence": "as stated by the user"})
    if idc is not None:
        path, mpp = _path_at_mpp(idc, "--idc")
        samples += data.load_idc(path, input_mpp, mpp=mpp)
        training_data.append({"name": "breast IDC", "path": str(path), "mpp": mpp, "licence": "research use"})
    if pcam is not None:
        samples += data.load_pcam(pcam, pcam_split, input_mpp, limit=pcam_limit)
        training_data.append({"name": f"PCam {pcam_split}", "path": str(pcam), "mpp": data.PCAM_MPP, "licence": "CC0"})
    for spec in wsi:
        slide_path, sep, xml_path = spec.rpartition(":")
        if not sep:
            raise MicrometsError(f"--wsi {spec!r}: write SLIDE:ANNOTATION.xml")
        samples += data.load_wsi_xml(Path(slide_path), Path(xml_path), input_mpp, patch_px, wsi_patches, seed=seed)
        training_data.append({"name": Path(slide_path).name, "annotation": xml_path, "licence": "as stated by the user"})
    if not samples:
        raise MicrometsError("no training data: give --recipe, --folder, --idc, --pcam or --wsi")
    excluded = [g for g in exclude_groups.split(",") if g]
    missing = sorted(set(excluded) - {s.group for s in samples})
    if missing:
        raise MicrometsError(f"--exclude-groups: no samples in group(s) {', '.join(missing)}")
    samples = [s for s in samples if s.group not in excluded]
    if family not in ("cnn", "morphometry"):
        raise MicrometsError(f"--family {family!r}: choose cnn or morphometry")
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise MicrometsError(f"training data must hold both normal and tumour images, found labels {sorted(labels)}")
    groups = [g for g in cv_groups.split(",") if g]
    known = {s.group for s in samples}
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise MicrometsError(f"--cv-groups: no samples in group(s) {', '.join(unknown)}")
    command = "micromets train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    card = train_and_export(samples, out, name=name, version=version, input_mpp=input_mpp, patch_px=patch_px,
                            steps=steps, width=width, seed=seed, cv_groups=groups, training_data=training_data,
                            command=command, licence=licence, checks=checks, family=family,
                            stain_jitter=stain_jitter or STAIN_JITTER,
                            log=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"wrote {out / 'model.onnx'} and {out / 'model.json'} ({card['training']['wall_s']:.0f} s)")
