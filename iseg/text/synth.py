"""Synthetic word images with character boxes (NumPy + Pillow; no TensorFlow).

A word is drawn glyph by glyph along a baseline that is straight or a circular arc (curved
text), each glyph rotated to the arc's tangent; then colours, a perspective warp, blur and
noise. Every character's box is the axis-aligned box of its ink after all geometric steps,
so character-centre masks can be made from it. Deterministic for (seed, index).

Fonts come from an installed package: the DejaVu and STIX fonts that matplotlib ships
(else the system's DejaVu folder), or the files / folders given by `fonts`.
"""

import dataclasses
import functools
import glob
import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from iseg.text.charset import ALPHANUMERIC

SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
_FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral")


def _package_font_dir():
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def find_fonts(fonts=None):
    """Sorted font files: `fonts` (files and folders of .ttf/.otf), else the text fonts of
    matplotlib's font folder, else of the system DejaVu folder."""
    if fonts:
        found = []
        for item in fonts:
            if os.path.isdir(item):
                found += glob.glob(os.path.join(item, "*.[ot]tf"))
            elif os.path.isfile(item):
                found.append(item)
            else:
                raise FileNotFoundError(f"font file or folder not found: {item}")
        if not found:
            raise FileNotFoundError(f"no .ttf/.otf fonts in {', '.join(fonts)}")
        return sorted(found)
    for folder in (_package_font_dir(), *SYSTEM_FONT_DIRS):
        if folder and os.path.isdir(folder):
            found = [f for f in glob.glob(os.path.join(folder, "*.ttf"))
                     if os.path.basename(f).startswith(_FONT_PREFIXES)
                     and "Display" not in os.path.basename(f)]
            if found:
                return sorted(found)
    raise FileNotFoundError("no fonts found: install matplotlib (it ships the DejaVu fonts) "
                            "or pass font files")


@functools.lru_cache(maxsize=256)
def _font(path, size):
    return ImageFont.truetype(path, size)


@dataclasses.dataclass(frozen=True)
class SynthOptions:
    """What the renderer varies. Lengths count characters; `curved` is the probability of
    an arc baseline, `min/max_curvature` the range of |1/radius| in units of 1/font size;
    `lexicon_prob` the probability of a lexicon word (else a random string); `perspective`
    the corner jitter (fraction of the height), `blur` the largest Gaussian radius, `noise`
    the largest noise std, `gradient` the largest background colour ramp; `spacing` the
    letter spacing range (fraction of the font size)."""

    chars: str = ALPHANUMERIC
    min_length: int = 1
    max_length: int = 10
    lexicon: tuple = ()
    lexicon_prob: float = 0.5
    font_size: tuple = (22, 34)
    curved: float = 0.0
    max_curvature: float = 0.2
    min_curvature: float = 0.06
    perspective: float = 0.08
    blur: float = 1.0
    noise: float = 8.0
    gradient: float = 40.0
    spacing: tuple = (-0.05, 0.2)
    mixed_case: bool = True


def random_word(rng, options):
    words = [w for w in options.lexicon
             if options.min_length <= len(w) <= options.max_length]
    if words and rng.random() < options.lexicon_prob:
        word = words[rng.integers(len(words))]
    else:
        n = int(rng.integers(options.min_length, options.max_length + 1))
        word = "".join(options.chars[i] for i in rng.integers(len(options.chars), size=n))
    if options.mixed_case:
        word = [word.lower(), word.upper(), word.capitalize()][rng.integers(3)]
    return word


def _arc_point(s, k):
    """Baseline point at arc length `s` for curvature `k` (image coordinates, y down)."""
    if abs(k) < 1e-6:
        return s, 0.0
    return np.sin(k * s) / k, (1.0 - np.cos(k * s)) / k


def _glyphs(word, font, size, spacing, curvature):
    """[(glyph 'L' image, left, top)] placed along the baseline (canvas coordinates that may
    be negative)."""
    advances = [font.getlength(ch) * 1.0 for ch in word]
    gaps = spacing * size
    total = sum(advances) + gaps * (len(word) - 1)
    side = int(2.2 * size) + 4
    out = []
    s = -total / 2
    for ch, adv in zip(word, advances):
        centre = s + adv / 2
        x, y = _arc_point(centre, curvature)
        canvas = Image.new("L", (side, side), 0)
        ImageDraw.Draw(canvas).text((side / 2 - adv / 2, side / 2 + 0.35 * size), ch,
                                    font=font, fill=255, anchor="ls")
        angle = np.degrees(curvature * centre)
        if abs(angle) > 0.01:
            canvas = canvas.rotate(-angle, resample=Image.BILINEAR, center=(side / 2, side / 2))
        out.append((canvas, int(round(x - side / 2)), int(round(y - side / 2))))
        s += adv + gaps
    return out


def _paste_max(canvas, glyph, x, y):
    """canvas = max(canvas, glyph placed at (x, y)), clipped to the canvas."""
    h, w = canvas.shape
    gx0, gy0 = max(0, -x), max(0, -y)
    cx0, cy0 = max(0, x), max(0, y)
    cx1, cy1 = min(w, x + glyph.shape[1]), min(h, y + glyph.shape[0])
    if cx1 > cx0 and cy1 > cy0:
        region = canvas[cy0:cy1, cx0:cx1]
        np.maximum(region, glyph[gy0:gy0 + cy1 - cy0, gx0:gx0 + cx1 - cx0], out=region)


def _homography(src, dst):
    """3x3 H with dst ~ H src for four point pairs."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _apply(h, points):
    p = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ h.T
    return p[:, :2] / p[:, 2:3]


def _perspective(image, boxes, rng, amount):
    """Random perspective warp of an RGB array and its boxes [n, 4] (x0, y0, x1, y1)."""
    h, w = image.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    dst = src + rng.uniform(-amount, amount, size=(4, 2)) * h
    dst -= dst.min(axis=0)
    out_w, out_h = (int(np.ceil(v)) for v in dst.max(axis=0))
    forward = _homography(src, dst)
    inverse = np.linalg.inv(forward)
    coeffs = (inverse / inverse[2, 2]).reshape(-1)[:8]
    warped = Image.fromarray(image).transform((max(out_w, 1), max(out_h, 1)),
                                              Image.PERSPECTIVE, tuple(coeffs),
                                              resample=Image.BILINEAR,
                                              fillcolor=tuple(int(v) for v in image[0, 0]))
    corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]],
                        boxes[:, [0, 3]]], axis=1).reshape(-1, 2)
    moved = _apply(forward, corners).reshape(-1, 4, 2)
    new_boxes = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
    return np.asarray(warped), new_boxes


def _colours(rng):
    bg = rng.integers(0, 256, size=3)
    for _ in range(20):
        fg = rng.integers(0, 256, size=3)
        if abs(float(fg.mean()) - float(bg.mean())) >= 70:
            return bg, fg
    return bg, np.where(bg.mean() > 127, 0, 255) * np.ones(3, np.int64)


def render_word(rng, word, fonts, options=SynthOptions(), curved=None):
    """(uint8 RGB image `[H, W, 3]`, float32 character boxes `[len(word), 4]` as
    x0, y0, x1, y1 in pixels, pixel edges). `curved` None: curved with probability
    `options.curved`."""
    size = int(rng.integers(options.font_size[0], options.font_size[1] + 1))
    font = _font(fonts[rng.integers(len(fonts))], size)
    if curved is None:
        curved = rng.random() < options.curved
    curvature = 0.0
    if curved:
        k = rng.uniform(options.min_curvature, options.max_curvature) / size
        curvature = k if rng.random() < 0.5 else -k
    glyphs = _glyphs(word, font, size, rng.uniform(*options.spacing), curvature)
    inks = [g.getbbox() for g, _, _ in glyphs]
    boxes = np.array([(x + b[0], y + b[1], x + b[2], y + b[3]) if b else
                      (x + g.width / 2, y + g.height / 2, x + g.width / 2 + 1,
                       y + g.height / 2 + 1)
                      for (g, x, y), b in zip(glyphs, inks)], np.float64)
    margin = rng.uniform(0.05, 0.3, size=4) * size
    x0, y0 = boxes[:, 0].min() - margin[0], boxes[:, 1].min() - margin[1]
    width = int(np.ceil(boxes[:, 2].max() + margin[2] - x0))
    height = int(np.ceil(boxes[:, 3].max() + margin[3] - y0))
    ox, oy = int(np.floor(x0)), int(np.floor(y0))
    a = np.zeros((height, width), np.float32)
    for g, x, y in glyphs:
        _paste_max(a, np.asarray(g, np.float32) / 255.0, x - ox, y - oy)
    boxes -= [ox, oy, ox, oy]
    bg, fg = _colours(rng)
    a = a[..., None]
    ramp = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
    background = np.clip(bg + ramp * rng.uniform(-1, 1, size=3) * options.gradient, 0, 255)
    image = (background * (1 - a) + fg * a).astype(np.uint8)
    if options.perspective > 0:
        image, boxes = _perspective(image, boxes, rng, options.perspective)
    pil = Image.fromarray(image)
    radius = rng.uniform(0, options.blur)
    if radius > 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    image = np.asarray(pil, np.float32)
    if options.noise > 0:
        image = image + rng.normal(0, rng.uniform(0, options.noise), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), boxes.astype(np.float32)


def render_example(seed, index, fonts, options=SynthOptions(), curved=None):
    """(word, PNG bytes, boxes) of example `index` of a seeded set (worker friendly)."""
    rng = np.random.default_rng([int(seed), int(index)])
    word = random_word(rng, options)
    image, boxes = render_word(rng, word, fonts, options, curved)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return word, buf.getvalue(), boxes
