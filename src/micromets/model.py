"""The tumour detector seam: an ONNX model plus its model card, run with onnxruntime (never torch).

A model directory holds ``model.onnx`` and ``model.json`` (the card, schema in docs/DESIGN.md). The card says at
which resolution (``input_mpp``, µm/px) and patch size (``patch_px``) the model looks, how pixels are scaled, how
stain is normalised and how the network output becomes a tumour probability. :class:`Detector` applies all of that
itself, so callers hand it plain uint8 RGB patches at ``input_mpp``:

    det = Detector.load()                 # the shipped default (src/micromets/models/default)
    prob = det.predict(patches)           # (N, patch_px, patch_px, 3) uint8 -> (N,) float32 in [0, 1]

Stain normalisation (``card["stain_normalisation"]``, see :mod:`micromets.normalise`): with method ``macenko`` the
source stain vectors are estimated from the slide's own tissue — from the sample given to
:meth:`Detector.set_stain_reference` (one estimate per slide: recommended for heatmaps), or else from the tissue of
each ``predict`` batch — and mapped onto the card's reference vectors (the per-slide map goes through a
64-level-per-channel look-up table of the exact map, :func:`micromets.normalise.stain_lut`: faster; the output
differs from the exact map by ≈ 1/255 on average).

Families (``card["family"]``): ``cnn`` takes the scaled pixels (``card["input"]``: NCHW float32); ``morphometry``
(``card["input"]["layout"] = "features"``) takes the nuclear features of :mod:`micromets.morphometry`, computed
here in numpy, and its ONNX graph is the classifier (feature scaling inside the graph).

Verifier (``card["verifier"]``, optional): a second ONNX graph in the same folder (``file``, output
``probabilities``), in the shipped default the seed ensemble of :mod:`micromets.train.ensemble`. It sees the same
normalised patches (the same per-slide stain estimate) through :attr:`Detector.verifier`, a :class:`Detector` of
its own; :func:`micromets.analyze.confirmation` confirms again with it the lesions the detector confirms.

Context model (``card["context"]``, optional): a model folder inside this one (``folder``) with a card of its own,
a network that sees a larger field around each heatmap cell (``--model tissue-context``'s: 96 µm at 1 µm/px
around a 48 µm cell), loaded as :attr:`Detector.context` with its own stain estimate of the same slide;
:func:`micromets.heatmap.context_check` lowers a positive region of the heatmap in which the context model calls
no cell's field tumour.

Tissue filter (``card["tissue_filter"]``): a patch whose stained-tissue fraction (every RGB channel OD >= ``beta``)
is below ``min_fraction`` is background, and a patch of which at least ``ink_max_fraction`` is ink or black pigment
(:func:`micromets.normalise.ink_fraction`; default :data:`INK_MAX_FRACTION`, 1 turns the test off) cannot be read;
either gets probability 0 without being shown to the network. Ink is not a model's concern but the slide's: the
default applies to every card that does not state its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from micromets import normalise
from micromets.errors import MicrometsError

#: How the network's output becomes the tumour probability (``card["output"]``): ``softmax`` of N×C logits,
#: ``sigmoid`` of a logit, or ``probabilities`` already (N×C, softmax inside the graph), taken as they are.
OUTPUTS = ("softmax", "sigmoid", "probabilities")
#: a patch with at least this share of ink or black-pigment pixels is not scored (module docstring; measured on the
#: held-out normal breast slide, docs/model.md "Ink")
INK_MAX_FRACTION = 0.1

_REQUIRED = ("name", "version", "family", "input_mpp", "patch_px", "input", "output", "classes", "tumour_class_index")


#: onnxruntime's own log severity: 3 = errors only (its warnings are not micromets' to show; errors still raise).
ORT_LOG_SEVERITY = 3


def import_onnxruntime():
    """The onnxruntime module, quiet: its telemetry is off (``ORT_DISABLE_TELEMETRY``, unless the user set it),
    which otherwise prints an ANSI-coloured "Failed to persist telemetry device ID" warning on stderr whenever
    HOME is not writable, and its logger reports errors only. Set before the first import, which creates the
    runtime's environment; everything in micromets imports onnxruntime through here."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    ort.set_default_logger_severity(ORT_LOG_SEVERITY)
    return ort


def default_model_dir() -> Path:
    """Folder of the shipped default model (``src/micromets/models/default``)."""
    return Path(__file__).resolve().parent / "models" / "default"


def coarse_model_dir() -> Path:
    """Folder of the shipped coarse screening model of ``--mode fast`` (``src/micromets/models/coarse``)."""
    return Path(__file__).resolve().parent / "models" / "coarse"


#: Environment variable naming the user's models folder (see :func:`user_models_dir`).
USER_MODELS_ENV = "MICROMETS_MODELS"


def user_models_dir() -> Path:
    """The user's models folder, where ``micromets import-model`` and ``fetch-model`` install: ``$MICROMETS_MODELS``
    when set, else ``$XDG_DATA_HOME/micromets/models`` (``~/.local/share/micromets/models``). It need not exist."""
    if os.environ.get(USER_MODELS_ENV):
        return Path(os.environ[USER_MODELS_ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "micromets" / "models"


def installed_models() -> dict[str, Path]:
    """The installed detectors by name: every folder under ``micromets/models`` holding model.json and model.onnx
    (except helper models, :func:`_is_detector`),
    then those of :func:`user_models_dir` (the folder's name is the model's name on the command line,
    ``--model NAME``; a bundled model's name is never shadowed by a user's)."""
    found: dict[str, Path] = {}
    for root in (default_model_dir().parent, user_models_dir()):
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if (p / "model.json").is_file() and (p / "model.onnx").is_file() and _is_detector(p):
                    found.setdefault(p.name, p)
    return found


def _is_detector(model_dir: Path) -> bool:
    """False for a bundled helper model that is no tissue detector (card ``kind``, e.g. the nucleus classifier of
    the H&E cell count, ``models/nuclei``); an unreadable card is listed (loading it says what is wrong)."""
    try:
        return json.loads((model_dir / "model.json").read_text()).get("kind", "detector") == "detector"
    except (OSError, ValueError, AttributeError):
        return True


def resolve_model_dir(value: str | Path | None, what: str = "model") -> Path | None:
    """The model folder a user means by ``value``: an existing folder is that folder (it must hold model.onnx and
    model.json), anything else is looked up among :func:`installed_models` by name. None stays None (the default
    model). Raises :class:`MicrometsError` naming the installed models when it is neither."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        if not (path / "model.json").is_file() or not (path / "model.onnx").is_file():
            raise MicrometsError(f"{what} {value}: not a model folder (needs model.onnx and model.json)")
        return path
    installed = installed_models()
    if str(value) in installed:
        return installed[str(value)]
    raise MicrometsError(f"{what} {value}: neither a model folder nor an installed model; installed: "
                         f"{', '.join(installed)}")


def held_out_headline(card: dict) -> str | None:
    """One line of a card's held-out numbers (``metrics.held_out*``): AUC with its counts, or the AUC and
    carcinoma-window sensitivities averaged over seeds; None when the card reports no held-out evaluation."""
    for key, block in card.get("metrics", {}).items():
        if not key.startswith("held_out") or not isinstance(block, dict):
            continue
        if "auc" in block:
            line = f"{key}: AUC {block['auc']:.3f}"
            if "n_tumour" in block and "n_normal" in block:
                line += f" on {block['n_tumour']} tumour / {block['n_normal']} normal patches"
            if "sensitivity_at_95_specificity" in block:
                line += f", sensitivity {block['sensitivity_at_95_specificity']:.2f} at 95 % specificity"
            return line
        summary = block.get("summary", {})
        parts = [f"{name} AUC {s['auc']['mean']:.3f} ± {s['auc']['sd']:.3f}" for name, s in summary.items()
                 if isinstance(s.get("auc"), dict)]
        found = [f"{name} {s['labelled_window_sensitivity']['mean']:.2f}" for name, s in summary.items()
                 if isinstance(s.get("labelled_window_sensitivity"), dict)]
        if found:
            parts.append("carcinoma windows found: " + ", ".join(found))
        if parts:
            seeds = block.get("seeds")
            return f"{key}{f' (mean of {len(seeds)} seeds)' if seeds else ''}: " + "; ".join(parts)
    return None


def _session(ort, onnx_path: Path):
    """An onnxruntime CPU session of ``onnx_path``, single-threaded (see :meth:`Detector.load`)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = ORT_LOG_SEVERITY
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for broken files
        raise MicrometsError(f"{onnx_path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None


class Detector:
    """An ONNX tumour-patch classifier with its card; see the module docstring."""

    def __init__(self, model_dir: Path, card: dict, session, threads: int = 1, batch_size: int | None = None) -> None:
        self.model_dir = model_dir
        self.card = card
        self.name: str = card["name"]
        self.version: str = card["version"]
        self.input_mpp: float = float(card["input_mpp"])
        self.patch_px: int = int(card["patch_px"])
        self._session = session
        self._input_name = session.get_inputs()[0].name
        spec = card["input"]
        mean = np.asarray(spec.get("mean", [0.0, 0.0, 0.0]), dtype=np.float64)
        std = np.asarray(spec.get("std", [1.0, 1.0, 1.0]), dtype=np.float64)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)
        stain = card.get("stain_normalisation", {"method": "none"})
        self._stain_method: str = stain.get("method", "none")
        if self._stain_method not in ("none", "macenko"):
            raise MicrometsError(f"{model_dir / 'model.json'}: unknown stain_normalisation method {self._stain_method!r}")
        target = stain.get("target", {}).get("stain_vectors_od")
        self._target_he = normalise.REFERENCE_HE if target is None else np.asarray(target, dtype=np.float32)
        self._slide_lut: np.ndarray | None = None
        tissue = card.get("tissue_filter", {})
        self._tissue_beta = float(tissue.get("beta", 0.15))
        self._tissue_min_fraction = float(tissue.get("min_fraction", 0.0))
        self._ink_max_fraction = float(tissue.get("ink_max_fraction", INK_MAX_FRACTION))
        self.batch_size: int = int(batch_size if batch_size is not None else card.get("batch_size", 128))
        self.threads = max(1, int(threads))
        self._pool = None  # ThreadPoolExecutor of `threads` workers, made on first use
        #: the card's verifier graph as a Detector of its own (None: no verifier); see the module docstring
        self.verifier: Detector | None = None
        #: the card's context model (None: none); see the module docstring
        self.context: Detector | None = None

    @classmethod
    def load(cls, model_dir: str | Path | None = None, threads: int = 2, batch_size: int | None = None) -> "Detector":
        """Load ``model.onnx`` + ``model.json`` from ``model_dir`` (None = the shipped default).

        ``threads``: CPU threads of one :meth:`predict` call (2 = the two cores of a small machine). A call's
        patches are split into ``threads`` chunks run at the same time through one onnxruntime session, each run
        single-threaded (intra-op threads = 1, no spinning): for a network this small, data parallelism costs
        less CPU than splitting every operator across threads (measured: +15–55 % CPU for 2 intra-op threads).
        ``batch_size``: most patches per network run (None = the card's ``batch_size``, else 128).
        Raises :class:`MicrometsError` naming the file when the folder, ONNX file or card is missing or invalid.
        """
        ort = import_onnxruntime()
        folder = default_model_dir() if model_dir is None else Path(model_dir)
        card_path, onnx_path = folder / "model.json", folder / "model.onnx"
        if not card_path.is_file() or not onnx_path.is_file():
            raise MicrometsError(f"{folder}: not a model folder (needs model.onnx and model.json)")
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as err:
            raise MicrometsError(f"{card_path}: unreadable model card ({err})") from None
        missing = [key for key in _REQUIRED if key not in card]
        if missing:
            raise MicrometsError(f"{card_path}: model card lacks {', '.join(missing)}")
        if card["output"] not in OUTPUTS:
            raise MicrometsError(f"{card_path}: output must be {', '.join(map(repr, OUTPUTS))}, not {card['output']!r}")
        detector = cls(folder, card, _session(ort, onnx_path), threads, batch_size)
        verifier = card.get("verifier")
        if verifier:
            if not isinstance(verifier, dict) or verifier.get("output") not in OUTPUTS or "file" not in verifier:
                raise MicrometsError(f"{card_path}: verifier needs a file and an output ({', '.join(OUTPUTS)})")
            path = folder / verifier["file"]
            if not path.is_file():
                raise MicrometsError(f"{card_path}: verifier file {path} is missing")
            v_card = {**card, "output": verifier["output"], "name": f"{card['name']} verifier"}
            v_card.pop("verifier")
            detector.verifier = cls(folder, v_card, _session(ort, path), threads, batch_size)
        context = card.get("context")
        if context:
            if not isinstance(context, dict) or not isinstance(context.get("folder"), str):
                raise MicrometsError(f"{card_path}: context needs a folder (a model folder inside this one)")
            detector.context = cls.load(folder / context["folder"], threads, batch_size)
        return detector

    @property
    def cell_um(self) -> float:
        """Side of the field one patch covers, in µm (``patch_px * input_mpp``)."""
        return self.patch_px * self.input_mpp

    @property
    def target_he(self) -> np.ndarray:
        """The card's reference haematoxylin and eosin OD vectors (2, 3) (:data:`normalise.REFERENCE_HE` when it
        names none)."""
        return self._target_he

    def set_stain_reference(self, rgb_tissue_sample: np.ndarray | None) -> None:
        """Estimate the slide's stain vectors once from a uint8 RGB sample of its tissue (any shape, last axis 3).

        Every later :meth:`predict` maps patches with this one per-slide estimate. ``None`` goes back to estimating
        from each predict batch. Has no effect for a model whose card says ``stain_normalisation.method = none``.
        """
        if rgb_tissue_sample is None:
            self._slide_lut = None
        else:
            source_he = normalise.macenko_stain_matrix(rgb_tissue_sample, beta=self._tissue_beta)
            self._slide_lut = normalise.stain_lut(normalise.stain_transform(source_he, self._target_he))
        if self.verifier is not None:
            self.verifier._slide_lut = self._slide_lut
        if self.context is not None:
            self.context.set_stain_reference(rgb_tissue_sample)

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """The stain-normalised uint8 RGB batch the network sees (card's method; per-slide estimate if set)."""
        if self._stain_method == "none":
            return rgb
        if self._slide_lut is not None:
            return normalise.apply_stain_lut(rgb, self._slide_lut)
        source_he = normalise.macenko_stain_matrix(rgb, beta=self._tissue_beta)
        return normalise.apply_stain_transform(rgb, normalise.stain_transform(source_he, self._target_he))

    def predict(self, rgb: np.ndarray, inked: np.ndarray | None = None) -> np.ndarray:
        """Tumour probability, float32 (N,), of uint8 RGB patches (N, patch_px, patch_px, 3) at ``input_mpp``.

        ``inked``, a bool array (N,) if given, is set True where a patch got 0 unseen because ink or black pigment
        covers it (module docstring, tissue filter), False elsewhere."""
        p = self.patch_px
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[1:] != (p, p, 3):
            raise MicrometsError(
                f"model {self.name}: predict expects uint8 RGB patches of shape (N, {p}, {p}, 3), got "
                f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
            )
        n_chunks = max(self.threads, -(-len(rgb) // self.batch_size))
        bounds = np.linspace(0, len(rgb), n_chunks + 1).astype(int)
        chunks = [rgb[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if self.threads == 1 or len(chunks) == 1:
            parts = [self._predict_chunk(c) for c in chunks]
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="micromets-onnx")
            parts = list(self._pool.map(self._predict_chunk, chunks))
        if inked is not None:
            inked[:] = np.concatenate([part[1] for part in parts]) if parts else False
        return np.concatenate([part[0] for part in parts]) if parts else np.zeros(0, np.float32)

    def _predict_chunk(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` of one chunk in one thread: tissue filter, then the network on the tissue patches;
        → (probabilities, patches left unscored under ink)."""
        prob = np.zeros(len(rgb), dtype=np.float32)
        keep = normalise.tissue_fraction(rgb, self._tissue_beta) >= self._tissue_min_fraction
        inked = np.zeros(len(rgb), bool)
        if self._ink_max_fraction < 1:
            inked = keep & (normalise.ink_fraction(rgb) >= self._ink_max_fraction)
            keep &= ~inked
        if keep.all():
            prob[:] = self._run(rgb)
        elif keep.any():
            prob[keep] = self._run(rgb[keep])
        return prob, inked

    def windows(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Model patches (N, patch_px, patch_px, 3) covering one uint8 RGB image of resolution ``mpp`` µm/px.

        The image is resampled to ``input_mpp`` (Lanczos). A side shorter than ``patch_px`` is padded by
        reflection (centred); a longer one is covered by ``ceil(side / patch_px)`` windows, the last aligned to
        the far edge (so windows overlap a little rather than leave a strip unscored).
        """
        from PIL import Image

        if mpp <= 0:
            raise MicrometsError(f"resolution must be > 0 µm/px, got {mpp}")
        h, w = rgb.shape[:2]
        scale = mpp / self.input_mpp
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != (w, h):
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        p = self.patch_px
        pad = [(max(0, p - n) // 2, max(0, p - n) - max(0, p - n) // 2) for n in rgb.shape[:2]]
        if any(a or b for a, b in pad):
            rgb = np.pad(rgb, pad + [(0, 0)], mode="reflect" if min(rgb.shape[:2]) > 1 else "edge")
        starts = [np.unique(np.minimum(np.arange(0, n, p), n - p)) for n in rgb.shape[:2]]
        return np.stack([rgb[y:y + p, x:x + p] for y in starts[0] for x in starts[1]])

    def score_image(self, rgb: np.ndarray, mpp: float) -> float:
        """Tumour probability of a whole image (tile) at ``mpp`` µm/px: the maximum over its :meth:`windows`.

        A tile counts as tumour when any model field in it does (the CAMELYON convention that a patch is
        positive if it contains tumour). Stain vectors are estimated from the tile itself.
        """
        patches = self.windows(rgb, mpp)
        previous = self._slide_lut
        self.set_stain_reference(patches)
        try:
            return float(self.predict(patches).max())
        finally:
            self._slide_lut = previous

    def _input(self, rgb: np.ndarray) -> np.ndarray:
        """The network input of raw uint8 RGB patches: stain-normalised, then ``(x/255 - mean)/std`` as one
        multiply-add per channel written straight into float32 NCHW order.

        (Measured: gathering float32 values from a per-channel table of stain map and scaling together is slower
        than the uint8 stain table followed by the multiply-add; the float tables do not stay in cache.)
        """
        rgb = self.normalise(rgb)
        if self.card["input"].get("layout") == "features":  # morphometry family: numpy features → ONNX classifier
            from micromets.morphometry import patch_features

            return patch_features(rgb, self.input_mpp, self._target_he)
        x = np.empty((rgb.shape[0], 3, rgb.shape[1], rgb.shape[2]), np.float32)
        for c in range(3):
            np.multiply(rgb[..., c], self._scale[c], out=x[:, c], dtype=np.float32)
            x[:, c] += self._offset[c]
        return x

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        """Tumour probability of raw uint8 RGB patches (no tissue filter)."""
        out = self._session.run(None, {self._input_name: self._input(rgb)})[0].astype(np.float32)
        k = int(self.card["tumour_class_index"])
        if self.card["output"] == "probabilities":
            return out[:, k]
        if self.card["output"] == "softmax":
            out = out - out.max(axis=1, keepdims=True)
            e = np.exp(out)
            return e[:, k] / e.sum(axis=1)
        logit = out[:, k] if out.ndim == 2 else out
        return 1.0 / (1.0 + np.exp(-logit))
