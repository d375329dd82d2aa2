"""Captioned images of one coloured shape, drawn deterministically from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
}
SIZES = {"small": 7, "large": 12}  # half-width in pixels
POSITIONS = {"left": (9, 16), "right": (23, 16), "top": (16, 9), "bottom": (16, 23), "center": (16, 16)}
ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
# What caption consistency is scored on. The shipped UNet (two levels, no positional
# embedding) does not learn absolute position: its position accuracy is at chance (~0.2),
# so position is reported alongside but not counted.
SCORED_ATTRIBUTES = ("shape", "color", "size")
BACKGROUND = (30, 30, 30)
RESOLUTION = 32


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.size} {self.color} {self.shape} {where}"

    @classmethod
    def from_caption(cls, caption: str) -> Scene:
        """The scene a caption describes ("a large blue triangle on the top"); the inverse of ``caption``."""
        words = caption.split()
        if len(words) < 6 or words[0] != "a":
            raise InputError(f"not a shapes caption: {caption!r}")
        size, color, shape = words[1:4]
        position = "center" if words[-1] == "center" else words[-1]
        scene = cls(shape, color, size, position)
        if (
            scene.caption != caption
            or shape not in SHAPES
            or color not in COLORS
            or size not in SIZES
            or position not in POSITIONS
        ):
            raise InputError(f"not a shapes caption: {caption!r}")
        return scene

    def labels(self) -> dict[str, int]:
        return {k: ATTRIBUTES[k].index(getattr(self, k)) for k in ATTRIBUTES}


def all_scenes() -> list[Scene]:
    return [Scene(s, c, z, p) for s in SHAPES for c in COLORS for z in SIZES for p in POSITIONS]


def draw(scene: Scene, rng: random.Random | None = None) -> Image.Image:
    """Render one scene; ``rng`` adds a little jitter of position, size and colour."""
    rng = rng or random.Random(0)
    image = Image.new("RGB", (RESOLUTION, RESOLUTION), BACKGROUND)
    pen = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = cx + rng.randint(-1, 1), cy + rng.randint(-1, 1)
    r = SIZES[scene.size] // 2 + rng.randint(0, 1) + (1 if scene.size == "large" else 0)
    color = tuple(int(min(255, max(0, c + rng.randint(-15, 15)))) for c in COLORS[scene.color])
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif scene.shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] in [-1, 1], the convention of diffusers VAEs."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def sample_batch(size: int, seed: int) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """``size`` random scenes: images, captions and attribute labels, all from ``seed``."""
    rng = random.Random(seed)
    scenes = [
        Scene(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(tuple(SIZES)), rng.choice(tuple(POSITIONS)))
        for _ in range(size)
    ]
    images = torch.stack([to_tensor(draw(s, rng)) for s in scenes])
    labels = {k: torch.tensor([s.labels()[k] for s in scenes]) for k in ATTRIBUTES}
    return images, [s.caption for s in scenes], labels


def evaluation_scenes(count: int = 60, seed: int = 1234) -> list[Scene]:
    """A fixed, balanced-ish set of scenes for scoring generated images."""
    scenes = all_scenes()
    random.Random(seed).shuffle(scenes)
    return scenes[:count]
