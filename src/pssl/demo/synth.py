"""Procedural image synthesis for the embedded demo: textured objects on cluttered backgrounds.

An *appearance* (shape, hue, texture) defines a visual category. Classification classes and downstream
"thing" classes draw from one appearance bank, so a downstream class can share its look with a
classification class (what pre-training can transfer) or be new. Every function takes an explicit
`numpy.random.Generator`, so output depends only on the seed it is given.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Unit-radius outlines (x, y), drawn rotated and scaled. Chosen to stay distinct under rotation.
_STAR = [(math.cos(a) * r, math.sin(a) * r)
         for i in range(10) for a, r in [(math.pi * i / 5 - math.pi / 2, 1.0 if i % 2 == 0 else 0.42)]]
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "star": _STAR,
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "bar": [(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
    "chevron": [(-0.9, -0.9), (0.1, 0), (-0.9, 0.9), (-0.3, 0.9), (0.7, 0), (-0.3, -0.9)],
    "hexagon": [(math.cos(math.pi * i / 3), math.sin(math.pi * i / 3)) for i in range(6)],
    "ell": [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
}
SHAPES = ("disc", "square", "triangle", "star", "cross", "ring", "crescent", "bar", "arrow", "chevron",
          "hexagon", "ell")
TEXTURES = ("stripes", "dots", "checker", "waves", "speckle", "plain")


@dataclass(frozen=True)
class Appearance:
    shape: str
    hue: float
    texture: str


def appearance(k: int) -> Appearance:
    """The k-th appearance of the bank; hues follow the golden-ratio sequence so neighbours differ."""
    return Appearance(
        shape=SHAPES[k % len(SHAPES)],
        hue=(0.07 + k * 0.618034) % 1.0,
        texture=TEXTURES[(k + k // len(SHAPES)) % len(TEXTURES)],
    )


def hsv(h: float, s: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1]; h scalar, s and v scalars or (H, W) arrays. Returns (H, W, 3)."""
    s, v = np.broadcast_arrays(np.asarray(s, dtype=np.float32), np.asarray(v, dtype=np.float32))
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, 1.0, 1.0)
    pure = np.array([r, g, b], dtype=np.float32)
    # hsv = v * (1 - s + s * pure colour): exact for the pure hue's channels.
    return v[..., None] * (1.0 - s[..., None] + s[..., None] * pure)


def shape_mask(shape: str, h: int, w: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (h, w) mask of `shape` centred at (cy, cx) with the given radius (pixels) and rotation."""
    if shape in POLYGONS:
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in POLYGONS[shape]]
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon(pts, fill=255)
        return np.asarray(canvas) > 127
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
    if shape == "disc":
        return d2 <= 1.0
    if shape == "ring":
        return (d2 <= 1.0) & (d2 >= 0.42)
    if shape == "crescent":
        oy, ox = cy + 0.45 * radius * math.sin(angle), cx + 0.45 * radius * math.cos(angle)
        inner = ((yy - oy) ** 2 + (xx - ox) ** 2) / (0.8 * radius) ** 2
        return (d2 <= 1.0) & (inner > 1.0)
    raise ValueError(f"unknown shape {shape!r}")


def pattern(kind: str, h: int, w: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A (h, w) texture pattern in [0, 1]; period and orientation are jittered per call."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = rng.uniform(5.0, 9.0) * scale
    if kind == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if kind == "dots":
        return ((((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2)
                < (0.3 * period) ** 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(2 * math.pi * u / period + 2.0 * np.sin(2 * math.pi * v / (2 * period)))
    if kind == "speckle":
        return smooth_noise(h, w, rng, cells=max(2, int(max(h, w) / (period * 0.6))))
    if kind == "plain":
        return np.clip(0.5 + (u - u.mean()) / (2.0 * max(h, w)), 0, 1)
    raise ValueError(f"unknown texture {kind!r}")


def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of `cells` x `cells` values, bicubically upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def fill(app: Appearance, h: int, w: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """(h, w, 3) RGB in [0, 1]: the appearance's colour modulated by its texture."""
    p = pattern(app.texture, h, w, rng, scale)
    hue = app.hue + rng.uniform(-0.025, 0.025)
    sat = rng.uniform(0.65, 0.95)
    val = rng.uniform(0.7, 0.95)
    return hsv(hue, sat * (0.75 + 0.25 * p), val * (0.45 + 0.55 * p))


def clutter(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered, textured background: a low-frequency colour field plus random distractor strokes."""
    field = np.stack([smooth_noise(h, w, rng, cells=rng.integers(3, 7)) for _ in range(3)], axis=-1)
    img = Image.fromarray((255 * (0.15 + 0.7 * field)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        colour = tuple(int(c) for c in rng.integers(30, 226, size=3))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(-0.4, 0.4) * w, y0 + rng.uniform(-0.4, 0.4) * h
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=colour,
                           width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, 0.08 * max(h, w))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
    out = np.asarray(img, dtype=np.float32) / 255.0
    return out + rng.normal(0, 0.03, size=out.shape).astype(np.float32)


def paste_object(img: np.ndarray, app: Appearance, rng: np.random.Generator, radius_frac: tuple[float, float],
                 border_overhang: float = 0.6) -> np.ndarray:
    """Draw one object of `app` into `img` (in place) at a random scale/position; return its mask.

    Centres may lie within `border_overhang * radius` of the edge, so objects sometimes touch the border.
    """
    h, w = img.shape[:2]
    radius = rng.uniform(*radius_frac) * min(h, w)
    margin = border_overhang * radius
    cy = rng.uniform(min(margin, h / 2), max(h - margin, h / 2))
    cx = rng.uniform(min(margin, w / 2), max(w - margin, w / 2))
    mask = shape_mask(app.shape, h, w, cy, cx, radius, rng.uniform(0, 2 * math.pi))
    img[mask] = fill(app, h, w, rng)[mask]
    return mask


def to_uint8(img: np.ndarray, rng: np.random.Generator, noise: float = 0.015) -> np.ndarray:
    """Add a little sensor noise and quantise to uint8."""
    img = img + rng.normal(0, noise, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def classification_image(app: Appearance, rng: np.random.Generator, min_side: int, max_side: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One classification image: a single object of `app` on clutter. Returns (uint8 RGB, bool mask)."""
    aspect = rng.choice([0.66, 0.75, 1.0, 1.33, 1.5])  # width / height
    long_side = int(rng.integers(min_side, max_side + 1))
    short_side = max(min_side // 2, int(long_side * min(aspect, 1 / aspect)))
    h, w = (long_side, short_side) if aspect < 1 else (short_side, long_side)
    img = clutter(h, w, rng)
    mask = paste_object(img, app, rng, radius_frac=(0.18, 0.45))
    return to_uint8(img, rng), mask


@dataclass(frozen=True)
class SceneClass:
    """A downstream class as drawn in demo scenes: `stuff` fills a band, a thing is a shaped object."""
    label: int
    app: Appearance
    stuff: bool


def scene_image(h: int, w: int, classes: list[SceneClass], background_label: int, rng: np.random.Generator,
                max_things: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A multi-object scene: stuff bands (top to bottom), then 1..max_things objects on top.

    Returns (uint8 RGB (h, w, 3), int32 label map in the dataset's class indices, background_label where
    only clutter shows).
    """
    img = clutter(h, w, rng)
    label = np.full((h, w), background_label, dtype=np.int32)
    stuff = [c for c in classes if c.stuff]
    things = [c for c in classes if not c.stuff]
    if stuff:
        n_bands = int(rng.integers(1, min(3, len(stuff)) + 1))
        chosen = rng.choice(len(stuff), size=n_bands, replace=False)
        # Bands cover the top and bottom of the scene with wavy boundaries; clutter may remain between.
        cuts = np.sort(rng.uniform(0.2, 0.8, size=n_bands)) * h
        xx = np.arange(w, dtype=np.float32)
        yy = np.arange(h, dtype=np.float32)[:, None]
        for i, k in enumerate(chosen):
            wave = cuts[i] + 0.06 * h * np.sin(2 * math.pi * xx / w * rng.uniform(0.5, 2) + rng.uniform(0, 6))
            region = yy < wave if i == 0 else yy >= wave
            img[region] = fill(stuff[k].app, h, w, rng, scale=1.5)[region]
            label[region] = stuff[k].label
    for _ in range(int(rng.integers(1, max_things + 1)) if things else 0):
        c = things[int(rng.integers(0, len(things)))]
        mask = paste_object(img, c.app, rng, radius_frac=(0.12, 0.3))
        label[mask] = c.label
    return to_uint8(img, rng), label
