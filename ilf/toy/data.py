"""Toy data: procedurally rendered shape scenes with captions from a small grammar, and upsampled digits.

A scene has five attributes (shape, colour, size, position, count); its caption spells all of them,
e.g. "two small red circles on the left". Everything is a pure function of a seed, so the same
seed gives the same scenes, captions and pixels on every machine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from ilf.errors import ILFConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
COUNTS: tuple[str, ...] = ("one", "two", "three")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS, "count": COUNTS,
}
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235),
    "yellow": (240, 220, 40), "purple": (170, 60, 210), "cyan": (40, 220, 220),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "center": "in the center",
}
# Region of the canvas (x0, y0, x1, y1, as fractions) where the objects of each position are placed.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0), "center": (0.15, 0.15, 0.85, 0.85),
}
RADIUS: dict[str, float] = {"small": 0.08, "large": 0.14}  # object half-width as a fraction of the canvas
FILLER_WORDS: frozenset[str] = frozenset({"on", "the", "at", "in", "a", "an"})
BACKGROUND: tuple[int, int, int] = (16, 16, 16)
_SUPERSAMPLE = 4  # render at 4x and downsample with a box filter (anti-aliased edges)


def check_value(attribute: str, value: str) -> str:
    """Return `value` if it is in the vocabulary of `attribute`, else raise ILFConfigError naming the allowed ones."""
    if attribute not in ATTRIBUTES:
        raise ILFConfigError("attribute", attribute, ATTRIBUTES)
    if value not in ATTRIBUTES[attribute]:
        raise ILFConfigError(attribute, value, ATTRIBUTES[attribute])
    return value


@dataclass(frozen=True)
class Scene:
    """One toy scene: `count` objects of one shape, colour and size, placed in one region."""

    shape: str
    color: str
    size: str
    position: str
    count: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            check_value(name, getattr(self, name))

    def caption(self) -> str:
        """The scene's caption, e.g. 'two small red circles on the left'."""
        noun = self.shape if self.count == "one" else PLURALS[self.shape]
        return f"{self.count} {self.size} {self.color} {noun} {POSITION_PHRASES[self.position]}"

    def attributes(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def n_objects(self) -> int:
        return COUNTS.index(self.count) + 1


_WORDS: dict[str, tuple[str, str]] = {w: (a, w) for a, vocab in ATTRIBUTES.items() for w in vocab}
_WORDS.update({p: ("shape", s) for s, p in PLURALS.items()})
VOCABULARY: tuple[str, ...] = tuple(sorted(set(_WORDS) | FILLER_WORDS))


def parse_caption(caption: str) -> dict[str, str]:
    """Map a caption to its attributes ({'count': 'two', 'shape': 'circle', ...}); unknown words raise ValueError."""
    out: dict[str, str] = {}
    for word in caption.lower().replace(",", " ").replace(".", " ").split():
        if word in FILLER_WORDS:
            continue
        if word not in _WORDS:
            raise ValueError(f"unknown word {word!r} in caption {caption!r}: the toy grammar knows "
                             + ", ".join(repr(w) for w in VOCABULARY))
        attr, value = _WORDS[word]
        if attr in out and out[attr] != value:
            raise ValueError(f"caption {caption!r} gives two values for {attr}: {out[attr]!r} and {value!r}")
        out[attr] = value
    return out


def sample_scenes(n: int, seed: int, **vocab: Iterable[str]) -> list[Scene]:
    """`n` scenes with attributes drawn uniformly; keyword `shapes=`, `colors=`, ... restrict a vocabulary.

    The first k scenes of a seed are the same for every n >= k.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    choices = {}
    for attr, allowed in ATTRIBUTES.items():
        values = tuple(vocab.pop(attr + "s", allowed))
        if not values:
            raise ILFConfigError(attr + "s", values, "a non-empty list")
        choices[attr] = tuple(check_value(attr, v) for v in values)
    if vocab:
        raise ILFConfigError("vocabulary", sorted(vocab)[0], [a + "s" for a in ATTRIBUTES])
    rng = np.random.default_rng(seed)
    # One scene at a time, so the first k scenes of a seed do not depend on n.
    return [Scene(**{a: v[int(rng.integers(len(v)))] for a, v in choices.items()}) for _ in range(n)]


def _centres(scene: Scene, size: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centres (canvas units) inside the scene's region, non-overlapping, jittered by `rng`."""
    x0, y0, x1, y1 = (v * size for v in REGIONS[scene.position])
    rad = RADIUS[scene.size] * size
    lo_x, hi_x, lo_y, hi_y = x0 + rad + 1, x1 - rad - 1, y0 + rad + 1, y1 - rad - 1
    k = scene.n_objects
    for _ in range(200):
        pts = [(rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)) for _ in range(k)]
        if all(np.hypot(a[0] - b[0], a[1] - b[1]) >= 2.1 * rad for i, a in enumerate(pts) for b in pts[i + 1:]):
            return pts
    # Fallback: evenly spaced along the region's diagonal (always fits for the sizes above).
    ts = np.linspace(0.0, 1.0, k) if k > 1 else np.array([0.5])
    return [(lo_x + t * (hi_x - lo_x), lo_y + t * (hi_y - lo_y)) for t in ts]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    else:  # cross
        w = 0.35 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def render_scene(scene: Scene, resolution: int = 32, seed: int = 0) -> np.ndarray:
    """Render `scene` to a (resolution, resolution, 3) uint8 image; `seed` jitters object placement."""
    if resolution < 8:
        raise ValueError(f"resolution={resolution} must be >= 8")
    rng = np.random.default_rng(seed)
    big = resolution * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    rad = RADIUS[scene.size] * big
    for cx, cy in _centres(scene, big, rng):
        _draw(draw, scene.shape, cx, cy, rad, RGB[scene.color])
    img = img.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def make_shapes_dataset(n: int, seed: int, resolution: int = 32) -> tuple[np.ndarray, list[str], list[dict]]:
    """`n` rendered scenes: images (n, H, W, 3) uint8, captions, attribute dicts; deterministic in `seed`."""
    scenes = sample_scenes(n, seed)
    children = np.random.SeedSequence(seed).spawn(n)
    images = np.zeros((n, resolution, resolution, 3), dtype=np.uint8)
    for i, (scene, child) in enumerate(zip(scenes, children)):
        images[i] = render_scene(scene, resolution, seed=int(child.generate_state(1)[0]))
    return images, [s.caption() for s in scenes], [s.attributes() for s in scenes]


def toy_prompts(n: int, seed: int) -> list[str]:
    """`n` toy captions (the text-to-image prompt set), deterministic in `seed`."""
    return [s.caption() for s in sample_scenes(n, seed)]


def load_digits_dataset(resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images), upsampled bicubically: (n, H, W, 3) uint8, labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.zeros((len(small), resolution, resolution, 3), dtype=np.uint8)
    for i, im in enumerate(small):
        up = Image.fromarray(im, mode="L").resize((resolution, resolution), Image.Resampling.BICUBIC)
        out[i] = np.asarray(up)[..., None]
    return out, digits.target.astype(np.int64)
