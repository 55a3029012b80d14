"""Pictures of a slide result for people: heatmap colours, overlays, outlines, scale bars and small SVG plots.

Plain functions over numpy arrays. Geometry arrives in level-0 pixels (``l0_``) with the slide's ``l0_mpp``;
a picture of the slide at ``img_mpp`` µm/px whose top-left is level-0 ``(l0_x, l0_y)`` maps a level-0 point
``(x, y)`` to picture pixel ``((x - l0_x) * l0_mpp / img_mpp, (y - l0_y) * l0_mpp / img_mpp)``.

The same colours are used by the viewer (``micromets.viewer``) so that report and viewer read alike.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from micromets.sizes import format_mm

#: Outline colour per node / lesion class (RGB), shared with the viewer's front end.
CLASS_COLOURS = {
    "negative": (120, 120, 120),
    "itc": (0, 183, 255),
    "micro": (57, 211, 83),
    "macro": (255, 43, 214),
}

#: Heatmap colour map anchors: tumour probability → RGB, linear in between (blue → yellow → red).
PROB_ANCHORS = np.array([0.0, 0.5, 1.0])
PROB_COLOURS = np.array([[40, 60, 160], [250, 230, 80], [200, 20, 30]], dtype=np.float32)

#: AJCC 8 deposit-size boundaries drawn on the size plots (mm): ITC <= 0.2 < micro <= 2.0 < macro.
SIZE_BOUNDARIES_MM = (0.2, 2.0)


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` → ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def prob_colours(prob: np.ndarray) -> np.ndarray:
    """Tumour probability (any shape, values in [0, 1]) → uint8 RGB of shape ``prob.shape + (3,)``."""
    p = np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)
    channels = [np.interp(p, PROB_ANCHORS, PROB_COLOURS[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def heatmap_rgba(h_prob: np.ndarray, min_prob: float = 0.02) -> np.ndarray:
    """Heatmap cells → RGBA image, one pixel per cell (row = ``h_`` row).

    Cells with probability below ``min_prob`` (unscored background is 0) are fully transparent; the others are
    coloured by :func:`prob_colours` with opacity rising from 35 % (p = 0) to 100 % (p = 1), so that normal
    tissue stays visible under a faint tint and tumour is opaque.
    """
    p = np.asarray(h_prob, dtype=np.float32)
    rgba = np.empty(p.shape + (4,), np.uint8)
    rgba[..., :3] = prob_colours(p)
    alpha = (0.35 + 0.65 * np.clip(p, 0, 1)) * 255
    rgba[..., 3] = np.where(p >= min_prob, alpha, 0).round().astype(np.uint8)
    return rgba


def overlay_heatmap(
    img: np.ndarray,
    img_mpp: float,
    h_prob: np.ndarray,
    cell_um: float,
    l0_origin: Sequence[float],
    l0_mpp: float,
    opacity: float = 0.55,
) -> np.ndarray:
    """Blend a heatmap over a whole-slide picture (``img`` RGB at ``img_mpp`` µm/px, top-left at level-0 0, 0).

    Each picture pixel takes the heatmap cell under its centre: cell ``(r, c)`` covers level-0 x in
    ``[ox + c*cell_um/l0_mpp, ox + (c+1)*cell_um/l0_mpp)`` (docs/DESIGN.md). ``opacity`` scales the per-cell
    alpha of :func:`heatmap_rgba`.
    """
    rows, cols = img.shape[:2]
    cell_l0 = cell_um / l0_mpp
    scale = img_mpp / l0_mpp  # level-0 px per picture px
    h_c = np.floor(((np.arange(cols) + 0.5) * scale - l0_origin[0]) / cell_l0).astype(np.int64)
    h_r = np.floor(((np.arange(rows) + 0.5) * scale - l0_origin[1]) / cell_l0).astype(np.int64)
    ok_c = (h_c >= 0) & (h_c < h_prob.shape[1])
    ok_r = (h_r >= 0) & (h_r < h_prob.shape[0])
    rgba = heatmap_rgba(h_prob)[np.clip(h_r, 0, h_prob.shape[0] - 1)][:, np.clip(h_c, 0, h_prob.shape[1] - 1)]
    alpha = rgba[..., 3:].astype(np.float32) / 255 * opacity * (ok_r[:, None] & ok_c[None, :])[..., None]
    out = img.astype(np.float32) * (1 - alpha) + rgba[..., :3].astype(np.float32) * alpha
    return out.round().astype(np.uint8)


def _font(size_px: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans when installed (it has the µ glyph), else Pillow's bundled font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size_px)
    except OSError:
        return ImageFont.load_default(size=size_px)


def draw_outlines(
    img: np.ndarray,
    outlines: Sequence[tuple[Sequence[Sequence[Sequence[float]]], str, str]],
    img_mpp: float,
    l0_mpp: float,
    l0_offset: Sequence[float] = (0.0, 0.0),
    width_px: int = 2,
) -> np.ndarray:
    """Draw lesion outlines with labels on a picture; returns a new RGB array.

    ``outlines`` holds ``(l0_outline, lesion_class, label)`` per lesion, ``l0_outline`` being a list of exterior
    rings of level-0 ``[x, y]`` points (the result.json ``l0_outline``). Each ring is drawn in the class colour
    over a dark halo, the label beside the lesion's top-left corner.
    """
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = _font(max(11, min(pil.width, pil.height) // 40))
    k = l0_mpp / img_mpp
    for rings, lesion_class, label in outlines:
        colour = CLASS_COLOURS.get(lesion_class, (255, 255, 255))
        all_xy = []
        for ring in rings:
            xy = (np.asarray(ring, dtype=np.float64) - np.asarray(l0_offset, dtype=np.float64)) * k
            all_xy.append(xy)
            pts = [tuple(p) for p in xy] + [tuple(xy[0])]
            draw.line(pts, fill=(20, 20, 20), width=width_px + 2, joint="curve")
            draw.line(pts, fill=colour, width=width_px, joint="curve")
        if label and all_xy:
            xy = np.concatenate(all_xy)
            x0, y0 = xy[:, 0].min(), xy[:, 1].min()
            draw.text((x0, y0 - 2), label, fill=colour, font=font, anchor="lb", stroke_width=2,
                      stroke_fill=(20, 20, 20))
    return np.asarray(pil)


def nice_length_um(max_um: float) -> float:
    """The largest 1-2-5 × 10^k µm length not above ``max_um`` (for scale bars)."""
    if max_um <= 0:
        raise ValueError(f"scale-bar length must be positive, got {max_um} µm")
    base = 10 ** math.floor(math.log10(max_um))
    return max(m * base for m in (1, 2, 5) if m * base <= max_um)


def format_length_um(length_um: float) -> str:
    """``150`` → ``"150 µm"``, ``2000`` → ``"2 mm"`` (mm from 1,000 µm)."""
    if length_um >= 1000:
        return f"{length_um / 1000:g} mm"
    return f"{length_um:g} µm"


def draw_scale_bar(img: np.ndarray, img_mpp: float, max_fraction: float = 0.3) -> tuple[np.ndarray, float]:
    """Draw a labelled scale bar in the bottom-left corner; returns the picture and the bar length in µm.

    The bar is the largest 1-2-5 length that fits in ``max_fraction`` of the picture width; its pixel length is
    ``round(length_um / img_mpp)``.
    """
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    length_um = nice_length_um(pil.width * max_fraction * img_mpp)
    bar_px = round(length_um / img_mpp)
    font = _font(max(11, pil.height // 22))
    margin = max(6, pil.width // 60)
    text = format_length_um(length_um)
    text_h = font.getbbox(text)[3]
    thick = max(3, pil.height // 120)
    y_bar = pil.height - margin - thick
    box = (margin - 4, y_bar - text_h - 10, margin + max(bar_px, font.getlength(text)) + 4, pil.height - margin + 4)
    draw.rectangle(box, fill=(255, 255, 255))
    draw.rectangle((margin, y_bar, margin + bar_px - 1, y_bar + thick - 1), fill=(0, 0, 0))
    draw.text((margin, y_bar - 4), text, fill=(0, 0, 0), font=font, anchor="lb")
    return np.asarray(pil), length_um


def legend_strip(width_px: int, threshold: float | None, height_px: int = 58) -> np.ndarray:
    """A white strip (RGB) to put under a slide picture: the heatmap colour bar 0 → 1 (the colours of
    :func:`prob_colours`) with the threshold marked, and the outline colour of each class (:data:`CLASS_COLOURS`)."""
    pil = Image.new("RGB", (width_px, height_px), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    font = _font(12)
    x0, bar_w, y0, bar_h = 8, max(60, min(300, width_px // 2 - 16)), 18, 12
    draw.text((x0, y0 - 3), "tumour probability", fill=(0, 0, 0), font=font, anchor="lb")
    ramp = prob_colours(np.linspace(0, 1, bar_w, dtype=np.float32))
    pil.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0)), (x0, y0))
    draw.rectangle((x0, y0, x0 + bar_w - 1, y0 + bar_h - 1), outline=(60, 60, 60))
    for p in (0.0, 1.0):
        draw.text((x0 + p * (bar_w - 1), y0 + bar_h + 2), f"{p:g}", fill=(0, 0, 0), font=font, anchor="mt")
    if threshold is not None:
        x = x0 + float(threshold) * (bar_w - 1)
        draw.line((x, y0 - 3, x, y0 + bar_h + 2), fill=(0, 0, 0), width=3)
        draw.text((x, y0 + bar_h + 2), f"threshold {threshold:g}", fill=(0, 0, 0), font=font, anchor="mt")
    x = x0 + bar_w + 24
    for name, label in (("itc", "ITC"), ("micro", "micro"), ("macro", "macro")):
        draw.rectangle((x, y0, x + 22, y0 + bar_h - 1), outline=(20, 20, 20), fill=CLASS_COLOURS[name], width=1)
        draw.text((x + 26, y0 + bar_h // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
        x += 34 + font.getlength(label)
    draw.text((x0 + bar_w + 24, y0 - 3), "outlines", fill=(0, 0, 0), font=font, anchor="lb")
    return np.asarray(pil)


def png_data_uri(rgb: np.ndarray) -> str:
    """An image array as a ``data:image/png;base64,…`` URI (for self-contained HTML)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    """An RGB array as a ``data:image/jpeg;base64,…`` URI (smaller than PNG for tissue pictures)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colour_scale_svg(threshold: float | None = None, width_px: int = 260, height_px: int = 44) -> str:
    """Inline SVG legend of the heatmap colours for probability 0 → 1, with the detection threshold marked."""
    stops = "".join(
        f'<stop offset="{p:.2f}" stop-color="{hex_colour(prob_colours(np.float32(p)))}"/>'
        for p in np.linspace(0, 1, 11)
    )
    bar_w = width_px - 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="colour-scale" width="{width_px}" height="{height_px}" '
        f'role="img" aria-label="heatmap colour scale, tumour probability 0 to 1">',
        f'<defs><linearGradient id="probgrad">{stops}</linearGradient></defs>',
        f'<rect x="10" y="4" width="{bar_w}" height="14" fill="url(#probgrad)" stroke="#333" stroke-width="0.5"/>',
    ]
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = 10 + p * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="22" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="33" font-size="10" text-anchor="middle">{p:g}</text>')
    if threshold is not None:
        x = 10 + float(threshold) * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="1" x2="{x:.1f}" y2="21" stroke="#000" stroke-width="2"/>')
        parts.append(f'<text x="{x:.1f}" y="43" font-size="9" text-anchor="middle">threshold {threshold:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def size_bars_svg(deposits: Sequence[tuple[str, float, str]], width_px: int = 560) -> str:
    """Inline SVG: one horizontal bar per deposit (largest first) on a log mm axis, with the 0.2 / 2.0 mm lines.

    ``deposits`` holds ``(label, diameter_mm, lesion_class)``. The axis spans 0.01–20 mm (deposits outside are
    clipped to the ends); the ITC / micro / macro bands are shaded so that a bar's class is read at a glance.
    """
    lo_mm, hi_mm = 0.01, 20.0
    left, right, row_h = 70, 16, 16
    plot_w = width_px - left - right
    rows = sorted(deposits, key=lambda d: -d[1])
    height_px = 34 + row_h * max(1, len(rows))

    def x_of(mm: float) -> float:
        mm = min(max(mm, lo_mm), hi_mm)
        return left + plot_w * (math.log10(mm) - math.log10(lo_mm)) / (math.log10(hi_mm) - math.log10(lo_mm))

    plot_h = row_h * max(1, len(rows))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="size-bars" width="{width_px}" height="{height_px}" '
        f'role="img" aria-label="deposit diameters in mm against the 0.2 and 2.0 mm boundaries">'
    ]
    bands = [(lo_mm, 0.2, "itc"), (0.2, 2.0, "micro"), (2.0, hi_mm, "macro")]
    for a, b, name in bands:
        parts.append(f'<rect x="{x_of(a):.1f}" y="4" width="{x_of(b) - x_of(a):.1f}" height="{plot_h}" '
                     f'fill="{hex_colour(CLASS_COLOURS[name])}" fill-opacity="0.12"/>')
        parts.append(f'<text x="{(x_of(a) + x_of(b)) / 2:.1f}" y="{plot_h + 30}" font-size="9" '
                     f'text-anchor="middle" fill="#555">{"ITC" if name == "itc" else name}</text>')
    for i, (label, mm, cls) in enumerate(rows):
        y = 6 + i * row_h
        parts.append(f'<text x="{left - 4}" y="{y + 10}" font-size="10" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(1.0, x_of(mm) - left):.1f}" height="{row_h - 4}" '
                     f'fill="{hex_colour(CLASS_COLOURS.get(cls, (90, 90, 90)))}" stroke="#222" stroke-width="0.5"/>')
        parts.append(f'<text x="{x_of(mm) + 3:.1f}" y="{y + 10}" font-size="9">{format_mm(mm)}</text>')
    if not rows:
        parts.append(f'<text x="{left + 4}" y="{6 + 10}" font-size="10" fill="#555">no deposits</text>')
    for mm in (0.01, 0.1, 1.0, 10.0):
        parts.append(f'<line x1="{x_of(mm):.1f}" y1="{plot_h + 4}" x2="{x_of(mm):.1f}" y2="{plot_h + 8}" '
                     f'stroke="#333"/><text x="{x_of(mm):.1f}" y="{plot_h + 18}" font-size="9" '
                     f'text-anchor="middle">{mm:g} mm</text>')
    for mm in SIZE_BOUNDARIES_MM:
        parts.append(f'<line x1="{x_of(mm):.1f}" y1="2" x2="{x_of(mm):.1f}" y2="{plot_h + 6}" stroke="#000" '
                     f'stroke-width="1.2" stroke-dasharray="3,2"/>')
    parts.append("</svg>")
    return "".join(parts)
