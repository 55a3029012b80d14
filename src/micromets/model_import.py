"""A user's own patch classifier made into a micromets model folder (``model.onnx`` + card ``model.json``).

:func:`import_model` takes an ONNX patch classifier, a TorchScript file (``torch.jit.save``) or a whole PyTorch
``nn.Module`` saved with ``torch.save``; a torch file is exported to ONNX (torch is the ``train`` extra and is
imported only here, for that). The ONNX graph is checked with onnxruntime before anything is installed: one
float32 input N×3×P×P, and a batch of two zero patches must give N×C scores (C = the number of classes). The card
says what the user told: resolution (µm/px), patch size, classes, which one is tumour, pixel scaling.

:func:`fetch_model` downloads a zip holding ``model.onnx`` + ``model.json`` (only when asked: nothing in micromets
downloads at run time otherwise), checks its sha256 when given, and loads it with :class:`micromets.model.Detector`
before installing it.

Both write into a temporary folder beside the destination and rename it into place at the end, so a refused or
broken model leaves nothing installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from micromets.errors import MicrometsError
from micromets.model import Detector, import_onnxruntime

#: Suffixes read as ONNX; any other file is read with torch (TorchScript first, then a whole pickled module).
ONNX_SUFFIXES = (".onnx",)


def make_card(name: str, *, input_mpp: float, patch_px: int, classes: list[str], tumour_class: str,
              mean: list[float], std: list[float], source: str, licence: str | None = None,
              scores: str = "logits") -> dict:
    """The model card of an imported classifier (every field :class:`micromets.model.Detector` requires)."""
    return {
        "name": name,
        "version": "imported",
        "family": "cnn",
        "architecture": f"imported from {source}",
        "input_mpp": input_mpp,
        "patch_px": patch_px,
        "channels": "RGB",
        "input": {"layout": "NCHW", "dtype": "float32", "scale": "x/255", "mean": mean, "std": std},
        "stain_normalisation": {"method": "none"},
        "tissue_filter": {"beta": 0.15, "min_fraction": 0.05,
                          "rule": "patch with < min_fraction of pixels having every channel OD >= beta scores 0"},
        "output": "probabilities" if scores == "probabilities" else "softmax",
        "classes": classes,
        "tumour_class_index": classes.index(tumour_class),
        "confirm_threshold": 0.5,
        "batch_size": 128,
        "licence": licence or "not stated (imported model)",
    }


def check_onnx(onnx_path: Path, patch_px: int, n_classes: int, what: str, scores: str = "logits") -> None:
    """Refuse (:class:`MicrometsError`) an ONNX file that is not a patch classifier of this shape, or whose scores
    are not what ``scores`` says: ``probabilities`` must lie in [0, 1] and sum to 1 per patch; ``logits`` that do
    both on a black and a white patch are taken for probabilities (softmax again would squash them)."""
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for broken files
        raise MicrometsError(f"{what}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise MicrometsError(f"{what}: needs one input of shape N×3×P×P, has "
                             f"{', '.join(str(i.shape) for i in inputs)}")
    shape = inputs[0].shape
    if (isinstance(shape[1], int) and shape[1] != 3) or any(isinstance(d, int) and d != patch_px for d in shape[2:]):
        raise MicrometsError(f"{what}: input shape {shape} is not N×3×{patch_px}×{patch_px} (--patch-px {patch_px})")
    try:
        x = np.zeros((2, 3, patch_px, patch_px), np.float32)
        x[1] = 1.0
        out = session.run(None, {inputs[0].name: x})[0]
    except Exception as err:
        raise MicrometsError(f"{what}: fails on a batch of 2 patches of {patch_px} px "
                             f"({str(err).splitlines()[0]})") from None
    if out.shape != (2, n_classes):
        raise MicrometsError(f"{what}: output of 2 patches has shape {tuple(out.shape)}, expected (2, {n_classes}) "
                             f"(one score per class: {n_classes} classes given)")
    looks_like_probabilities = bool(((out >= 0) & (out <= 1)).all() and np.allclose(out.sum(axis=1), 1, atol=1e-4))
    if scores == "probabilities" and not looks_like_probabilities:
        raise MicrometsError(f"{what}: --scores probabilities, but its outputs do not lie in [0, 1] summing to 1 "
                             f"(give --scores logits)")
    if scores == "logits" and looks_like_probabilities:
        raise MicrometsError(f"{what}: its outputs already sum to 1 (softmax inside the model): give --scores "
                             f"probabilities")


def torch_to_onnx(src: Path, onnx_path: Path, patch_px: int) -> None:
    """Export a TorchScript file or a whole pickled ``nn.Module`` to ONNX (opset 17, batch dimension free)."""
    try:
        import torch
    except ImportError:
        raise MicrometsError(f"{src}: converting a PyTorch model needs torch: pip install 'micromets[train]'") from None
    try:
        module = torch.jit.load(str(src), map_location="cpu")
    except Exception:
        try:  # a whole module saved with torch.save: unpickling runs the file's code, as torch.load always does
            module = torch.load(str(src), map_location="cpu", weights_only=False)
        except Exception as err:
            raise MicrometsError(f"{src}: neither TorchScript nor a saved PyTorch module "
                                 f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(module, torch.nn.Module):
        raise MicrometsError(f"{src}: holds a {type(module).__name__}, not a PyTorch module (a state_dict alone "
                             f"has no network: save the whole module or a TorchScript file)")
    module.eval()
    try:
        with warnings.catch_warnings():  # torch's notes on its exporters are not the user's concern
            warnings.simplefilter("ignore")
            torch.onnx.export(module, torch.zeros(1, 3, patch_px, patch_px), str(onnx_path), input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                              opset_version=17, dynamo=False)
    except Exception as err:
        raise MicrometsError(f"{src}: ONNX export failed ({str(err).splitlines()[0]})") from None


def _install(build: Path, dest: Path) -> Path:
    """Move the finished folder ``build`` to ``dest`` (which does not exist or is empty)."""
    if dest.is_dir():
        dest.rmdir()
    build.rename(dest)
    return dest


def import_model(src: Path, dest: Path, *, name: str, input_mpp: float, patch_px: int, classes: list[str],
                 tumour_class: str, mean: list[float], std: list[float], licence: str | None = None,
                 scores: str = "logits") -> Path:
    """Make ``dest`` a model folder from the classifier file ``src``; see the module docstring. Returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        onnx_path = build / "model.onnx"
        if src.suffix.lower() in ONNX_SUFFIXES:
            shutil.copyfile(src, onnx_path)
        else:
            torch_to_onnx(src, onnx_path, patch_px)
        check_onnx(onnx_path, patch_px, len(classes), str(src), scores)
        card = make_card(name, input_mpp=input_mpp, patch_px=patch_px, classes=classes, tumour_class=tumour_class,
                         mean=mean, std=std, source=src.name, licence=licence, scores=scores)
        (build / "model.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        Detector.load(build)  # the card and graph load as every command will load them
        return _install(build, dest)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def fetch_model(url: str, dest: Path, sha256: str | None = None, timeout_s: float = 60.0) -> Path:
    """Download the zip at ``url`` (model.onnx + model.json, at its root or in one folder) into ``dest``."""
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        archive = build / "download.zip"
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, archive.open("wb") as f:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except (OSError, ValueError) as err:
            raise MicrometsError(f"{url}: download failed ({err})") from None
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise MicrometsError(f"{url}: sha256 {digest.hexdigest()} is not the expected {sha256}; nothing installed")
        model = build / "model"
        model.mkdir()
        try:
            with zipfile.ZipFile(archive) as zf:
                members = {Path(m).name: m for m in zf.namelist()
                           if Path(m).name in ("model.onnx", "model.json") and len(Path(m).parts) <= 2}
                if set(members) != {"model.onnx", "model.json"}:
                    raise MicrometsError(f"{url}: the zip holds no model.onnx and model.json")
                for filename, member in members.items():
                    with zf.open(member) as src, (model / filename).open("wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile:
            raise MicrometsError(f"{url}: not a zip file") from None
        Detector.load(model)
        return _install(model, dest)
    finally:
        shutil.rmtree(build, ignore_errors=True)
