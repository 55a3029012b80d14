"""Whole-slide images through OpenSlide: pyramid levels, physical resolution, windowed reads.

Every read is a window: nothing here loads a whole level at full resolution. Coordinates follow openslide:
``l0_x, l0_y`` are level-0 pixels (origin top-left); ``l_w, l_h`` are pixels of the level being read.

Resolution (µm per level-0 pixel, ``l0_mpp``) comes, in this order, from

1. the caller's override (``mpp=``),
2. OpenSlide's ``openslide.mpp-x`` / ``openslide.mpp-y`` properties (Aperio, Hamamatsu, MIRAX, DICOM, …; for
   DICOM OpenSlide derives them from the level-0 instance's PixelSpacing, and ``mpp_source`` says
   ``dicom.PixelSpacing``),
3. the TIFF resolution tags (``tiff.XResolution`` with ``tiff.ResolutionUnit`` centimeter or inch).

A DICOM whole-slide image is a folder of ``.dcm`` instances (one per pyramid level, plus label/overview): the
folder, or any of its ``.dcm`` files, names the slide; its ``slide_id`` is the folder's name (instance files are
named by UID).

A slide with none of these is refused with an error naming the file: a size in mm needs a resolution.

OpenSlide opens every slide and says what its levels are. Where a level is a plain tiled TIFF page (OpenSlide's
"generic-tiff" and "aperio" formats: pyramidal TIFF, Aperio SVS) its tiles are decoded directly by tifffile +
imagecodecs (libjpeg-turbo) instead of through ``openslide_read_region``, which costs about 6× more CPU for the
same pixels (0.28 against 0.045 ms per 96 × 96 px of a JPEG level, measured on the speed slides): OpenSlide
decodes into premultiplied ARGB, paints it with cairo and openslide-python converts it back. A level is read
directly only when one of its tiles decodes to exactly OpenSlide's pixels (checked the first time the level is
read) and only at whole level pixels; every other read (fractional level positions, other formats, other
compressions) goes through OpenSlide.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from micromets.errors import MicrometsError

#: Level-0 resolutions (µm/px) plausible for a slide scan: scanners give 0.1-0.3 (40x-80x), 0.5 (20x), 1 (10x);
#: above 2 µm/px the 0.5 µm/px detector would only see an upsampled blur (and --mpp 20 meant reading the slide
#: 40x upsampled for minutes); below 0.05 µm/px is beyond what light microscopy resolves.
PLAUSIBLE_MPP = (0.05, 2.0)
#: A slide whose smallest pyramid level holds more pixels than this has no usable low-resolution level: the
#: tissue mask would have to decode gigapixels. Such files (a huge flat TIFF) must be converted to a pyramid.
MAX_SMALLEST_LEVEL_PX = 1_000_000_000

#: File name ending of a DICOM instance; a folder holding such files is one DICOM whole-slide image.
DICOM_SUFFIX = ".dcm"
_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25_400.0}
#: OpenSlide formats whose levels are tiled TIFF pages that :class:`_DirectTiles` may decode.
_DIRECT_VENDORS = ("generic-tiff", "aperio")
#: TIFF compressions decoded directly: none, LZW, JPEG, Adobe Deflate, Deflate.
_DIRECT_COMPRESSIONS = (1, 5, 7, 8, 32946)


def _mpp_from_properties(props) -> tuple[float, str] | None:
    try:
        mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
        mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
        dicom = props.get(openslide.PROPERTY_NAME_VENDOR) == "dicom"
        return (mpp_x + mpp_y) / 2, "dicom.PixelSpacing" if dicom else "openslide.mpp"
    except (KeyError, ValueError):
        pass
    unit = props.get("tiff.ResolutionUnit", "").lower()
    try:
        res_x = float(props["tiff.XResolution"])
        res_y = float(props.get("tiff.YResolution", res_x))
    except (KeyError, ValueError):
        return None
    if unit not in _UM_PER_UNIT or res_x <= 0 or res_y <= 0:
        return None
    return _UM_PER_UNIT[unit] * (1 / res_x + 1 / res_y) / 2, "tiff-resolution"


class _DirectTiles:
    """The tiled TIFF pages behind some of a slide's OpenSlide levels, decoded with tifffile + imagecodecs.

    ``read`` returns what OpenSlide's ``read_region`` composited over white returns at whole level pixels: tile
    pixels inside the level, white outside it and where a tile is missing (zero bytes). Decoded tiles are kept in
    a small LRU cache (``cache_bytes``), so neighbouring windows that share a tile decode it once. Thread-safe:
    tile bytes are read with ``os.pread`` and decoding releases the GIL.
    """

    def __init__(self, path: Path, osr: openslide.OpenSlide, cache_bytes: int = 32 << 20) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(path)
        self._fd = os.open(path, os.O_RDONLY)
        self._osr = osr
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._lock = threading.Lock()
        self._decoding: dict[tuple[int, int], threading.Event] = {}  # tiles being decoded, by (level, index)
        pages = {(lev.keyframe.imagewidth, lev.keyframe.imagelength): lev.keyframe
                 for lev in self._tif.series[0].levels}
        self._pages = {}
        for level, dims in enumerate(osr.level_dimensions):
            page = pages.get(tuple(dims))
            if page is not None and page.is_tiled and page.tiledepth == 1 and page.samplesperpixel == 3 \
                    and page.bitspersample == 8 and page.planarconfig == 1 and page.compression in _DIRECT_COMPRESSIONS:
                self._pages[level] = page
        self._usable: dict[int, bool] = {}  # level -> checked against OpenSlide (on first use)

    @classmethod
    def open(cls, path: Path, osr: openslide.OpenSlide) -> "_DirectTiles | None":
        """The direct reader of ``path``'s tiled levels, or None when no level is a plain tiled page (or tifffile
        fails)."""
        if osr.properties.get(openslide.PROPERTY_NAME_VENDOR) not in _DIRECT_VENDORS or not path.is_file():
            return None
        try:
            direct = cls(path, osr)
        except Exception:  # tifffile raises many types on files OpenSlide accepts; OpenSlide then reads them
            return None
        if not direct._pages:
            direct.close()
            return None
        return direct

    def close(self) -> None:
        self._tif.close()
        os.close(self._fd)

    def usable(self, level: int) -> bool:
        """Whether ``level`` is decoded directly: a tiled page whose middle tile decodes to exactly OpenSlide's
        pixels (checked the first time the level is asked for, then remembered)."""
        if level not in self._pages:
            return False
        if level not in self._usable:
            self._usable[level] = self._same_as_openslide(level)
        return self._usable[level]

    def _same_as_openslide(self, level: int) -> bool:
        """Whether the level's middle tile decodes to OpenSlide's pixels exactly."""
        osr = self._osr
        page = self._pages[level]
        t_w, t_h = page.tilewidth, page.tilelength
        l_x = (page.imagewidth // 2) // t_w * t_w
        l_y = (page.imagelength // 2) // t_h * t_h
        down = osr.level_downsamples[level]
        if not (float(l_x * down).is_integer() and float(l_y * down).is_integer()):
            return False
        try:
            mine = self.read(level, l_x, l_y, t_w, t_h)
            theirs = np.array(_on_white(osr.read_region((round(l_x * down), round(l_y * down)), level, (t_w, t_h))))
        except Exception:
            return False
        return np.array_equal(mine, theirs)

    def levels(self) -> tuple[int, ...]:
        return tuple(level for level in self._pages if self.usable(level))

    def _tile(self, level: int, t_index: int) -> np.ndarray | None:
        """Decoded tile ``t_index`` of ``level`` as (tile_h, tile_w, 3) uint8, or None when it is missing.

        A tile that another thread is decoding is waited for, not decoded twice: the readers work on neighbouring
        blocks, which share tiles (on the 1.5 cm² speed slide, ``--mode fast`` decoded its tiles twice over).
        """
        key = (level, t_index)
        while True:
            with self._lock:
                tile = self._cache.get(key)
                if tile is not None:
                    self._cache.move_to_end(key)
                    return tile
                busy = self._decoding.get(key)
                if busy is None:
                    busy = self._decoding[key] = threading.Event()
                    break
            busy.wait()
        try:
            tile = self._decode(level, t_index)
            if tile is not None:
                with self._lock:
                    self._cache[key] = tile
                    self._cache_bytes += tile.nbytes
                    while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                        self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
            return tile
        finally:
            with self._lock:
                del self._decoding[key]
            busy.set()

    def _decode(self, level: int, t_index: int) -> np.ndarray | None:
        page = self._pages[level]
        count = page.databytecounts[t_index]
        if count == 0:
            return None
        data = os.pread(self._fd, count, page.dataoffsets[t_index])
        if len(data) != count:
            raise OSError(f"tile {t_index} of level {level} is truncated ({len(data)} of {count} bytes)")
        return page.decode(data, t_index, jpegtables=page.jpegtables)[0][0]

    def read(self, level: int, l_x: int, l_y: int, l_w: int, l_h: int) -> np.ndarray:
        """``(l_h, l_w, 3)`` uint8 RGB of ``level`` from level pixel ``(l_x, l_y)``; white outside the level."""
        page = self._pages[level]
        t_w, t_h = page.tilewidth, page.tilelength
        t_cols = -(-page.imagewidth // t_w)
        out = np.full((l_h, l_w, 3), 255, np.uint8)
        x0, x1 = max(l_x, 0), min(l_x + l_w, page.imagewidth)
        y0, y1 = max(l_y, 0), min(l_y + l_h, page.imagelength)
        if x0 >= x1 or y0 >= y1:
            return out
        for t_r in range(y0 // t_h, -(-y1 // t_h)):
            for t_c in range(x0 // t_w, -(-x1 // t_w)):
                tile = self._tile(level, t_r * t_cols + t_c)
                if tile is None:
                    continue
                ya, yb = max(y0, t_r * t_h), min(y1, (t_r + 1) * t_h)
                xa, xb = max(x0, t_c * t_w), min(x1, (t_c + 1) * t_w)
                out[ya - l_y:yb - l_y, xa - l_x:xb - l_x] = tile[ya - t_r * t_h:yb - t_r * t_h,
                                                                 xa - t_c * t_w:xb - t_c * t_w, :3]
        return out


class Slide:
    """An open whole-slide image with its level-0 resolution. Use :func:`open_slide` to make one."""

    def __init__(self, path: Path, osr: openslide.OpenSlide, l0_mpp: float, mpp_source: str):
        self.path = path
        self.slide_id = slide_id_of(path)
        self._osr = osr
        self._direct = _DirectTiles.open(path, osr)
        self.l0_mpp = l0_mpp
        self.mpp_source = mpp_source
        self.l0_width, self.l0_height = osr.dimensions
        self.level_count = osr.level_count
        self.level_dimensions = osr.level_dimensions
        self.level_downsamples = osr.level_downsamples
        self.properties = osr.properties
        self._level_for_mpp: dict[float, int] = {}

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._osr.close()
        if self._direct is not None:
            self._direct.close()

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels whose tiles are decoded directly (see the module docstring); the others go through OpenSlide."""
        return () if self._direct is None else self._direct.levels()

    @property
    def l0_area_mm2(self) -> float:
        return self.l0_width * self.l0_height * (self.l0_mpp / 1000) ** 2

    def read_region(self, l0_x: int, l0_y: int, level: int, l_w: int, l_h: int) -> np.ndarray:
        """Read ``l_w × l_h`` pixels of ``level`` whose top-left is at level-0 ``(l0_x, l0_y)``.

        Returns an ``(l_h, l_w, 3)`` uint8 RGB array; transparent pixels (outside the scanned area) are white.
        """
        rgb = self._read_direct(l0_x, l0_y, level, l_w, l_h)
        return np.array(self._read_openslide(l0_x, l0_y, level, l_w, l_h)) if rgb is None else rgb

    def _read_direct(self, l0_x: float, l0_y: float, level: int, l_w: int, l_h: int) -> np.ndarray | None:
        """The direct tile decode of a read at whole pixels of a directly decoded level, else None."""
        if self._direct is None or not self._direct.usable(level):
            return None
        down = self.level_downsamples[level]
        l_x, l_y = l0_x / down, l0_y / down
        if not (float(l_x).is_integer() and float(l_y).is_integer()):
            return None
        try:
            return self._direct.read(level, int(l_x), int(l_y), int(l_w), int(l_h))
        except (OSError, ValueError, RuntimeError) as err:  # truncated or corrupt tile data (tifffile, imagecodecs)
            raise MicrometsError(f"{self.path}: cannot read region at level {level} ({err})") from err

    def _read_image(self, l0_x: int, l0_y: int, level: int, l_w: int, l_h: int) -> Image.Image:
        rgb = self._read_direct(l0_x, l0_y, level, l_w, l_h)
        return self._read_openslide(l0_x, l0_y, level, l_w, l_h) if rgb is None else Image.fromarray(rgb)

    def _read_openslide(self, l0_x: int, l0_y: int, level: int, l_w: int, l_h: int) -> Image.Image:
        try:
            rgba = self._osr.read_region((int(l0_x), int(l0_y)), level, (int(l_w), int(l_h)))
        except openslide.OpenSlideError as err:
            raise MicrometsError(f"{self.path}: cannot read region at level {level} ({err})") from err
        return _on_white(rgba)

    def level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``target_mpp`` (remembered per target: OpenSlide's
        look-up is a ctypes call, which gives up the GIL, and getting it back behind the reader threads took 0.5 s
        of a 9 s ``--mode fast`` run)."""
        level = self._level_for_mpp.get(target_mpp)
        if level is None:
            level = self._level_for_mpp[target_mpp] = self._osr.get_best_level_for_downsample(
                target_mpp / self.l0_mpp * (1 + 1e-6))
        return level

    def read_at_mpp(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int, target_mpp: float) -> np.ndarray:
        """Read the level-0 rectangle ``(l0_x, l0_y, l0_w, l0_h)`` resampled to ``target_mpp`` µm/px.

        The output has ``round(l0_w * l0_mpp / target_mpp)`` columns (likewise rows). The read uses the coarsest
        pyramid level that is still at least as fine as the target, then an area-weighted resize.
        """
        out_w = max(1, round(l0_w * self.l0_mpp / target_mpp))
        out_h = max(1, round(l0_h * self.l0_mpp / target_mpp))
        level = self.level_for_mpp(target_mpp)
        downsample = self.level_downsamples[level]
        l_w = max(1, math.ceil(l0_w / downsample))
        l_h = max(1, math.ceil(l0_h / downsample))
        image = self._read_image(l0_x, l0_y, level, l_w, l_h)
        if (l_w, l_h) != (out_w, out_h):
            image = image.resize((out_w, out_h), Image.Resampling.BOX)
        return np.array(image)

    def read_window(self, l0_x: float, l0_y: float, out_w: int, out_h: int, target_mpp: float) -> np.ndarray:
        """``out_h × out_w`` RGB pixels at ``target_mpp`` µm/px whose top-left corner lies at level-0 ``(l0_x, l0_y)``
        (floats): output pixel ``(i, j)`` covers level-0 ``[l0_x + j·k, l0_x + (j+1)·k)`` (likewise rows) with
        ``k = target_mpp / l0_mpp``.

        Unlike :meth:`read_at_mpp` (which fits a rounded rectangle into a rounded output size), the box resampling
        here is anchored at exact positions, so a pixel comes out the same whichever window it is read in: windows
        that tile a grid give the pixels of one big read. Reads the coarsest level at least as fine as the target
        (with a margin for the filter); when that level is at ``target_mpp`` and the window falls on its pixels,
        the read is returned as is.
        """
        level = self.level_for_mpp(target_mpp)
        down = self.level_downsamples[level]
        k = target_mpp / (self.l0_mpp * down)  # level pixels per output pixel
        l_x0, l_y0 = l0_x / down, l0_y / down
        if k == 1.0 and float(l_x0).is_integer() and float(l_y0).is_integer():
            return self.read_region(round(l0_x), round(l0_y), level, out_w, out_h)
        margin = math.ceil(max(k, 1.0) / 2) + 1  # the box filter reaches half an output pixel beyond a pixel
        l0_rx, l0_ry = round((math.floor(l_x0) - margin) * down), round((math.floor(l_y0) - margin) * down)
        r_x0, r_y0 = l_x0 - l0_rx / down, l_y0 - l0_ry / down  # window origin within the read, level pixels
        l_w = math.ceil(r_x0 + out_w * k) + margin
        l_h = math.ceil(r_y0 + out_h * k) + margin
        image = self._read_image(l0_rx, l0_ry, level, l_w, l_h)
        box = (r_x0, r_y0, r_x0 + out_w * k, r_y0 + out_h * k)
        return np.array(image.resize((out_w, out_h), Image.Resampling.BOX, box=box))

    def thumbnail(self, target_mpp: float, l0_chunk_px: int = 8192) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp`` µm/px, read in windows (memory flat in slide size).

        Returns ``(rgb, thumb_mpp)``: the image and its exact µm/px (level-0 pixels per thumbnail pixel is an
        integer, so that thumbnail pixel ``(r, c)`` covers level-0 ``[c*k, (c+1)*k) × [r*k, (r+1)*k)``).
        """
        k = max(1, round(target_mpp / self.l0_mpp))
        thumb_mpp = k * self.l0_mpp
        out_w, out_h = math.ceil(self.l0_width / k), math.ceil(self.l0_height / k)
        chunk = max(1, l0_chunk_px // k)  # thumbnail pixels per window side
        out = np.empty((out_h, out_w, 3), np.uint8)
        for t_r in range(0, out_h, chunk):
            for t_c in range(0, out_w, chunk):
                w, h = min(chunk, out_w - t_c), min(chunk, out_h - t_r)
                out[t_r:t_r + h, t_c:t_c + w] = self.read_at_mpp(t_c * k, t_r * k, w * k, h * k, thumb_mpp)
        return out, thumb_mpp


def _on_white(rgba: Image.Image) -> Image.Image:
    """openslide-python's RGBA image (straight, not premultiplied, alpha) composited over white, as RGB:
    ``rgb·α + 255·(1 − α)``, all in Pillow's C code (an opaque read only drops alpha)."""
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba)
    return rgb


def check_l0_mpp(l0_mpp: float, where: str) -> float:
    """``l0_mpp`` when it is a plausible level-0 resolution (:data:`PLAUSIBLE_MPP`), else MicrometsError."""
    lo, hi = PLAUSIBLE_MPP
    if not (math.isfinite(l0_mpp) and lo <= l0_mpp <= hi):
        raise MicrometsError(f"{where}: implausible resolution {l0_mpp:g} µm/px; slide scanners give {lo:g}-{hi:g} "
                             "µm/px at level 0 (40x ≈ 0.25, 20x ≈ 0.5, 10x ≈ 1)")
    return l0_mpp


def check_not_special_file(path: Path, what: str | None = None) -> os.stat_result:
    """``os.stat(path)``, or MicrometsError (naming ``what``, default the path) when ``path`` is missing or a FIFO,
    socket or device: opening one can block forever (a FIFO waits for a writer), so no command ever opens one, as
    a slide or as any other input (:data:`micromets.cli.validate.IN_FILE`)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise MicrometsError(f"{what or path}: cannot read slide file ({err.strerror})") from err
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise MicrometsError(f"{what or path}: is not a regular file (FIFO, socket or device); not opened, as "
                             "reading one can block forever")
    return st


def dicom_folder(path: str | Path) -> Path | None:
    """The folder of the DICOM whole-slide image that ``path`` names (a folder holding ``.dcm`` files, or one of
    those files), else None."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == DICOM_SUFFIX:
        return path.parent
    if path.is_dir() and any(dicom_files(path)):
        return path
    return None


def dicom_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files directly in ``folder``, sorted by name ([] when it cannot be listed)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == DICOM_SUFFIX and p.is_file())
    except OSError:
        return []


def slide_id_of(path: str | Path) -> str:
    """The id of the slide at ``path``: its DICOM folder's name for a DICOM slide, else the file name without its
    suffix."""
    path = Path(path)
    folder = dicom_folder(path)
    return folder.name if folder is not None else path.stem


def _open_dicom(folder: Path) -> openslide.OpenSlide:
    """OpenSlide on the DICOM slide in ``folder``: the first of its ``.dcm`` files (by name) that OpenSlide opens;
    OpenSlide gathers the other instances of that series from the folder itself."""
    first_error = None
    for file in dicom_files(folder):
        try:
            return openslide.OpenSlide(str(file))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            first_error = first_error or err
    if isinstance(first_error, openslide.OpenSlideUnsupportedFormatError):
        raise MicrometsError(f"{folder}: no .dcm file of this folder is a DICOM whole-slide image OpenSlide reads")
    raise MicrometsError(f"{folder}: cannot open DICOM slide ({first_error})")


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image (SVS, TIFF, NDPI, MRXS, DICOM, … — anything OpenSlide reads). A DICOM slide is
    opened from its folder or any of its ``.dcm`` files, and its ``path`` is then the folder.

    ``mpp`` overrides the level-0 resolution in µm/px. Raises :class:`MicrometsError` naming the file when it is
    missing, not a slide, or has no resolution (and no override was given).
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise MicrometsError(f"{path}: symbolic link to nothing (dangling, or a loop of links)")
        raise MicrometsError(f"{path}: no such file")
    folder = dicom_folder(path)
    if path.is_dir() and folder is None:
        raise MicrometsError(f"{path}: is a folder, not a slide file (nor a DICOM slide: no .dcm files in it)")
    check_not_special_file(path)
    if path.is_file() and path.stat().st_size == 0:
        raise MicrometsError(f"{path}: empty file, not a slide")
    try:
        if folder is not None:
            path = folder
            osr = _open_dicom(folder)
        else:
            osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise MicrometsError(f"{path}: not a slide format OpenSlide can read") from err
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise MicrometsError(f"{path}: cannot open slide ({err})") from err
    if mpp is not None:
        found = (float(mpp), "override")
    else:
        found = _mpp_from_properties(osr.properties)
    if found is None:
        osr.close()
        raise MicrometsError(f"{path}: resolution unknown (no mpp or TIFF resolution tags); pass --mpp")
    l0_mpp, source = found
    l_w, l_h = osr.level_dimensions[-1]
    if l_w * l_h > MAX_SMALLEST_LEVEL_PX:
        osr.close()
        raise MicrometsError(f"{path}: no low-resolution level (smallest level {l_w}×{l_h} px); "
                             "convert it to a pyramidal slide first")
    try:
        check_l0_mpp(l0_mpp, f"{path} ({source})")
    except MicrometsError:
        osr.close()
        raise
    return Slide(path, osr, l0_mpp, source)
