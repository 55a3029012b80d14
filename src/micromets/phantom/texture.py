"""Seamless tissue texture from a folder of real H&E tiles.

The plane is covered by a grid of overlapping tiles (side `S`, overlap `O`, stride `S - O`). Each grid cell draws
one tile of the library and one of the 8 dihedral transforms (4 rotations × optional mirror) from a generator
seeded by `(seed, stream, t_row, t_col)`, so any window of the plane renders the same pixels whatever order or
size the windows are requested in. Neighbouring tiles are cross-faded over the overlap with complementary linear
ramps (feathering): the separable weights sum to exactly 1 everywhere, so there are no straight tile edges and no
change of brightness along the seams.

Tiles are resampled from their µm/px (`tiles_mpp`) to the phantom's (`l0_mpp`) with an anti-aliased resize so the
tissue keeps its physical scale: a 256 px tile at 0.243 µm/px (62 µm) becomes 128 px at 0.486 µm/px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize

from micromets.errors import MicrometsError
from micromets.normalise import macenko_normalise, macenko_stain_matrix

TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class TileLibrary:
    """Square RGB tiles at the phantom's resolution, float32 in [0, 255], all of side `side_px`."""

    tiles: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    side_px: int
    l0_mpp: float


def load_tiles(folder: str | Path, tiles_mpp: float, l0_mpp: float) -> TileLibrary:
    """Read every image in `folder`, resample from `tiles_mpp` to `l0_mpp` µm/px and crop to a common square.

    Raises `MicrometsError` naming the folder when it holds no readable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MicrometsError(f"tile folder not found: {folder}")
    if not (tiles_mpp > 0 and l0_mpp > 0):
        raise MicrometsError(f"tile resolution must be positive µm/px, got tiles_mpp={tiles_mpp}, mpp={l0_mpp}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in TILE_SUFFIXES)
    if not paths:
        raise MicrometsError(f"no tile images ({', '.join(TILE_SUFFIXES)}) in {folder}")
    scale = tiles_mpp / l0_mpp
    images = []
    for path in paths:
        try:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        except OSError as err:
            raise MicrometsError(f"cannot read tile image {path}: {err}") from None
        if scale != 1.0:
            shape = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
            rgb = resize(rgb, shape, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        images.append(rgb)
    side = min(min(img.shape[:2]) for img in images)
    if side < 16:
        raise MicrometsError(f"tiles in {folder} are {side} px after resampling to {l0_mpp} µm/px: too small")
    tiles = tuple(np.ascontiguousarray(img[:side, :side]) for img in images)
    return TileLibrary(tiles, tuple(p.name for p in paths), side, l0_mpp)


def restain(library: TileLibrary, like: TileLibrary) -> TileLibrary:
    """`library` re-stained to the H&E of `like`: Macenko (2009) stain vectors of each library, estimated over all
    of its tiles at once, and every tile of `library` re-expressed in the vectors of `like`.

    Tissue drawn from another laboratory's tiles (the bundled colorectal stroma lining the node as its capsule)
    then shares the stain of the slide it is placed in, as the tissues of one real section do; concentrations are
    kept, only the two stain colours change.
    """
    def pixels(lib: TileLibrary) -> np.ndarray:
        return np.concatenate([tile.reshape(-1, 3) for tile in lib.tiles]).astype(np.uint8)[None]

    source_he, target_he = macenko_stain_matrix(pixels(library)), macenko_stain_matrix(pixels(like))
    tiles = tuple(macenko_normalise(tile.astype(np.uint8), target_he, source_he).astype(np.float32)
                  for tile in library.tiles)
    return TileLibrary(tiles, library.names, library.side_px, library.l0_mpp)


def _ramps(side: int, overlap: int) -> np.ndarray:
    """1-D feather weights of one tile: linear ramp up over `overlap` px, flat, ramp down; overlapped sums are 1."""
    weight = np.ones(side, np.float32)
    up = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    weight[:overlap] = up
    weight[side - overlap:] = 1.0 - up
    return weight


def synthesize(
    library: TileLibrary,
    l0_x: int,
    l0_y: int,
    l0_w: int,
    l0_h: int,
    seed: int,
    stream: int,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """Texture of the window `[l0_x, l0_x + l0_w) × [l0_y, l0_y + l0_h)` as float32 (l0_h, l0_w, 3).

    `stream` separates independent textures of one phantom (e.g. 0 = normal tissue, 1 = tumour). `needed`, a bool
    (l0_h, l0_w) mask, skips grid cells that cover none of its pixels (their pixels are left 0).
    """
    side = library.side_px
    overlap = side // 4
    stride = side - overlap
    ramp = _ramps(side, overlap)
    out = np.zeros((l0_h, l0_w, 3), np.float32)
    # grid cell (r, c) covers level-0 [c*stride - overlap, c*stride - overlap + side) in x (same in y)
    c0, c1 = max(0, (l0_x + overlap - side) // stride + 1), (l0_x + l0_w - 1 + overlap) // stride
    r0, r1 = max(0, (l0_y + overlap - side) // stride + 1), (l0_y + l0_h - 1 + overlap) // stride
    for t_row in range(r0, r1 + 1):
        ty = t_row * stride - overlap
        y_a, y_b = max(ty, l0_y), min(ty + side, l0_y + l0_h)
        if y_a >= y_b:
            continue
        for t_col in range(c0, c1 + 1):
            tx = t_col * stride - overlap
            x_a, x_b = max(tx, l0_x), min(tx + side, l0_x + l0_w)
            if x_a >= x_b:
                continue
            win = (slice(y_a - l0_y, y_b - l0_y), slice(x_a - l0_x, x_b - l0_x))
            if needed is not None and not needed[win].any():
                continue
            rng = np.random.default_rng((seed, stream, t_row, t_col))
            tile = library.tiles[rng.integers(len(library.tiles))]
            tile = np.rot90(tile, k=int(rng.integers(4)))
            if rng.integers(2):
                tile = tile[:, ::-1]
            part = tile[y_a - ty:y_b - ty, x_a - tx:x_b - tx]
            weight = ramp[y_a - ty:y_b - ty, None] * ramp[None, x_a - tx:x_b - tx]
            out[win] += part * weight[..., None]
    return out
