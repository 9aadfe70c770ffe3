"""A small synthetic re-ID dataset in Market-1501 layout, for demos and tests without real data.

Each identity is a cartoon pedestrian with a fixed appearance drawn from
shared palettes: skin, hair (short or long), shirt colour with an optional
pattern (stripes or checks) and chest logo, sleeve length, trousers or
shorts, shoes, body height and width, and no bag, a backpack or a shoulder
bag. Palettes are small, so many identities share any single colour: only the
combination identifies a person.

Each camera adds nuisance that a network must learn to ignore: a dominant
viewpoint (front, back or side, which changes what is visible: face, logo,
backpack), a lighting gain, a colour cast and haze, blur, sensor noise, the
person's scale and position in the crop, a textured background and a chance
of partial occlusion. Every image adds its own jitter on top (walking stride,
mirror, shift, scale, gain, background phase).

Images are written as lossless PNGs named ``PPPP_cCs1_NNNNNN_00.png``. The root also
gets a marker file, :data:`MARKER`; ``overwrite`` replaces only a folder that holds
exactly such a dataset, so it can never delete anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .datasets import DISTRACTOR_PID

CLOTHES = np.array(
    [
        (30, 30, 35), (225, 225, 220), (128, 128, 128), (30, 40, 110), (180, 30, 35), (50, 90, 190),
        (40, 120, 60), (220, 190, 50), (110, 70, 40), (200, 180, 140), (220, 130, 160), (110, 50, 130),
        (230, 120, 40), (150, 140, 90), (70, 90, 130),
    ],
    dtype=np.float32,
) / 255  # fmt: skip
SKIN = np.array([(240, 200, 170), (200, 150, 110), (150, 100, 70), (90, 60, 40)], dtype=np.float32) / 255
HAIR = np.array([(20, 15, 10), (90, 60, 30), (200, 170, 100), (150, 150, 150)], dtype=np.float32) / 255
SHOES = np.array([(25, 25, 25), (230, 230, 230), (120, 80, 50)], dtype=np.float32) / 255
VIEWS = ("front", "back", "side")
MARKER = ".reid-prune-synthetic"  # written last into every generated dataset's root
FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
IMAGE_NAME = re.compile(r"\d{4}_c\d+s1_\d{6}_00\.png")
PATTERNS = ("plain", "hstripes", "vstripes", "checks")
BAGS = ("none", "backpack", "shoulder")


@dataclass(frozen=True)
class _Identity:
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shirt: np.ndarray
    pattern: str
    pattern_colour: np.ndarray
    stripe_period: float  # in units of body height
    logo: np.ndarray | None
    long_sleeves: bool
    legs: np.ndarray
    shorts: bool
    shoes: np.ndarray
    height: float  # fraction of the camera's person height
    width: float  # body width factor
    bag: str
    bag_colour: np.ndarray
    bag_side: int  # +1 right, -1 left (in the unmirrored front view)


@dataclass(frozen=True)
class _Camera:
    view: str  # dominant viewpoint
    gain: float
    cast: np.ndarray  # per-channel multiplier
    haze: float
    blur: float  # Gaussian radius in pixels
    noise: float
    person_height: float  # fraction of the image height
    x_bias: float  # horizontal offset of the person, fraction of the width
    background: np.ndarray
    floor: np.ndarray
    floor_line: float  # fraction of the height where the floor starts
    bar_period: float  # background texture (building facade) period, pixels
    bar_contrast: float
    occlusion_prob: float
    occluder: np.ndarray


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 0.04) -> np.ndarray:
    colour = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return np.clip(colour, 0, 1).astype(np.float32)


def _draw_identity(rng: np.random.Generator) -> _Identity:
    shirt_index, pattern_index = rng.choice(len(CLOTHES), 2, replace=False)
    return _Identity(
        skin=_pick(rng, SKIN, 0.03),
        hair=_pick(rng, HAIR, 0.03),
        long_hair=bool(rng.random() < 0.35),
        shirt=CLOTHES[shirt_index],
        pattern=PATTERNS[rng.choice(len(PATTERNS), p=(0.4, 0.25, 0.2, 0.15))],
        pattern_colour=CLOTHES[pattern_index],
        stripe_period=float(rng.uniform(0.04, 0.09)),
        logo=_pick(rng, CLOTHES) if rng.random() < 0.4 else None,
        long_sleeves=bool(rng.random() < 0.5),
        legs=_pick(rng, CLOTHES),
        shorts=bool(rng.random() < 0.25),
        shoes=_pick(rng, SHOES, 0.02),
        height=float(rng.uniform(0.86, 1.0)),
        width=float(rng.uniform(0.8, 1.25)),
        bag=BAGS[rng.choice(len(BAGS), p=(0.45, 0.3, 0.25))],
        bag_colour=_pick(rng, CLOTHES),
        bag_side=int(rng.choice((-1, 1))),
    )


def _draw_camera(rng: np.random.Generator, view: str) -> _Camera:
    return _Camera(
        view=view,
        gain=float(rng.uniform(0.55, 1.35)),
        cast=np.exp(rng.normal(0, 0.18, 3)).astype(np.float32),
        haze=float(rng.uniform(0.0, 0.25)),
        blur=float(rng.uniform(0.0, 1.3)),
        noise=float(rng.uniform(0.01, 0.04)),
        person_height=float(rng.uniform(0.72, 0.92)),
        x_bias=float(rng.uniform(-0.08, 0.08)),
        background=rng.uniform(0.15, 0.85, 3).astype(np.float32),
        floor=rng.uniform(0.15, 0.85, 3).astype(np.float32),
        floor_line=float(rng.uniform(0.6, 0.85)),
        bar_period=float(rng.uniform(6, 24)),
        bar_contrast=float(rng.uniform(0.05, 0.3)),
        occlusion_prob=float(rng.uniform(0.15, 0.45)),
        occluder=rng.uniform(0.05, 0.95, 3).astype(np.float32),
    )


def _render(person: _Identity, camera: _Camera, rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """One (height, width) RGB crop of ``person`` seen by ``camera`` with per-image jitter."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]

    # Background: a facade of vertical bars above a floor. Crops come from different parts of
    # the scene, so each image shifts the texture phase and the facade colour a little.
    phase = rng.uniform(0, camera.bar_period)
    bars = camera.bar_contrast * np.sign(np.sin(2 * np.pi * (x + phase) / camera.bar_period))
    background = np.clip(camera.background + rng.normal(0, 0.06, 3), 0, 1).astype(np.float32)
    image = np.where(
        (y < camera.floor_line * height)[..., None],
        background * (1 + bars)[..., None],
        np.broadcast_to(camera.floor * (1 - 0.3 * (y / height))[..., None], (height, width, 3)),
    ).astype(np.float32)

    # Body coordinates: v runs 0 (top of head) .. 1 (soles), u is horizontal, both in body heights.
    body = height * camera.person_height * person.height * np.exp(rng.normal(0, 0.05))
    feet = height * rng.uniform(0.94, 0.99)
    centre = width * (0.5 + camera.x_bias + rng.normal(0, 0.05))
    v = (y - (feet - body)) / body
    u = (x - centre) / body
    view = camera.view if rng.random() < 0.7 else VIEWS[rng.integers(len(VIEWS))]
    mirror = 1 if rng.random() < 0.5 else -1
    u = u * mirror
    if view == "back":  # the left-right sides of the body swap when seen from behind
        u = -u
    side = view == "side"
    w = person.width * (0.7 if side else 1.0)
    stride = rng.uniform(0, 1) * (1.6 if side else 0.6)

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        image[mask] = colour

    torso_half = w * (0.115 - 0.02 * (v - 0.17) / 0.36)
    torso = (v >= 0.17) & (v < 0.53) & (np.abs(u) < torso_half)
    arm_out = (np.abs(u) >= torso_half) & (np.abs(u) < torso_half + 0.045 * person.width) & (v >= 0.18) & (v < 0.5)
    if side:  # one arm swinging in front of the torso
        arm_out = (np.abs(u - 0.02 * stride) < 0.03 * person.width) & (v >= 0.19) & (v < 0.5)
    sleeve_end = 0.47 if person.long_sleeves else 0.3
    leg_offset = 0.055 * w + 0.035 * stride * np.clip((v - 0.52) / 0.43, 0, 1)
    legs = (v >= 0.52) & (v < 0.95) & ((np.abs(u - leg_offset) < 0.045 * w) | (np.abs(u + leg_offset) < 0.045 * w))
    shoes = (v >= 0.93) & (v < 1.0) & ((np.abs(u - leg_offset) < 0.05 * w) | (np.abs(u + leg_offset) < 0.05 * w))
    head = ((u / 0.06) ** 2 + ((v - 0.085) / 0.075) ** 2) < 1

    paint(legs, person.legs)
    if person.shorts:
        paint(legs & (v >= 0.68), person.skin)
    paint(shoes, person.shoes)
    paint(arm_out, person.shirt)
    paint(arm_out & (v >= sleeve_end), person.skin)
    paint(torso, person.shirt)
    if person.pattern != "plain":
        stripes_v = (v / person.stripe_period) % 1 < 0.5
        stripes_u = (u / person.stripe_period) % 1 < 0.5
        pattern = {"hstripes": stripes_v, "vstripes": stripes_u, "checks": stripes_u ^ stripes_v}[person.pattern]
        paint(torso & pattern, person.pattern_colour)
    paint(head, person.skin)
    if view == "back":
        paint(head, person.hair)
    elif view == "side":
        paint(head & ((v < 0.06) | (u < -0.01)), person.hair)
    else:
        paint(head & (v < 0.055), person.hair)
    if person.long_hair:
        hair_down = (v >= 0.08) & (v < 0.26)
        if view == "back":
            paint(hair_down & (np.abs(u) < 0.07), person.hair)
        elif view == "side":
            paint(hair_down & (u > -0.07) & (u < -0.01), person.hair)
        else:
            paint(hair_down & (np.abs(u) > 0.045) & (np.abs(u) < 0.075), person.hair)
    if person.logo is not None and view == "front":
        paint(((u / 0.035) ** 2 + ((v - 0.28) / 0.035) ** 2) < 1, person.logo)
    if person.bag == "backpack":
        if view == "back":
            paint((np.abs(u) < 0.085 * w) & (v >= 0.2) & (v < 0.45), person.bag_colour)
        elif view == "side":
            paint((u > -torso_half - 0.06) & (u < -torso_half + 0.01) & (v >= 0.2) & (v < 0.45), person.bag_colour)
        else:
            straps = (np.abs(np.abs(u) - 0.06 * w) < 0.012) & (v >= 0.17) & (v < 0.35)
            paint(straps, person.bag_colour)
    elif person.bag == "shoulder":
        bag_u = person.bag_side * u
        lo, hi = (-0.04, 0.04) if side else (torso_half, torso_half + 0.07)
        paint((bag_u >= lo) & (bag_u < hi) & (v >= 0.4) & (v < 0.54), person.bag_colour)

    # Round shading across the body, so the person is not flat colour.
    person_mask = torso | arm_out | legs | head | shoes
    image *= np.where(person_mask, 1 - 0.3 * np.clip(u / (0.25 * w), -1, 1) ** 2, 1.0)[..., None]

    if rng.random() < camera.occlusion_prob:
        if rng.random() < 0.5:  # a low obstacle (car, bench) across the bottom
            top = height * rng.uniform(0.6, 0.85)
            occluded = np.broadcast_to(y >= top, (height, width))
        else:  # a pole
            pole = width * rng.uniform(0.1, 0.9)
            occluded = np.broadcast_to(np.abs(x - pole) < width * rng.uniform(0.06, 0.16), (height, width))
        paint(occluded, camera.occluder * (1 + rng.normal(0, 0.05, 3)).astype(np.float32))

    gain = camera.gain * np.exp(rng.normal(0, 0.08, 3)).astype(np.float32)  # lighting and white-balance drift
    image = image * (gain * camera.cast) * (1 - camera.haze) + camera.haze * 0.7
    image += rng.normal(0, camera.noise, image.shape).astype(np.float32)
    crop = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return crop.filter(ImageFilter.GaussianBlur(camera.blur)) if camera.blur > 0.3 else crop


def generate_synthetic(
    root: str | Path,
    *,
    num_ids: int = 60,
    num_test_ids: int | None = None,
    images_per_camera: int = 4,
    num_cameras: int = 3,
    num_distractors: int = 10,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a learnable synthetic re-ID dataset in Market-1501 layout.

    Layout: ``bounding_box_train`` holds ``num_ids`` identities (pids 1..num_ids),
    each with ``images_per_camera`` images from each of ``num_cameras`` cameras.
    The ``num_test_ids`` test identities (default ``num_ids // 2``, pids after the
    train ones) have as many images; ``query`` takes one per identity per
    camera and ``bounding_box_test`` the rest, plus ``num_distractors`` images of
    other people with pid 0. The same seed gives byte-identical files.

    The dataset is written to a temporary folder beside ``root`` and renamed
    into place, so a failure leaves no partial dataset.

    Args:
        root: output folder; must be absent or empty unless ``overwrite``.
        overwrite: replace ``root`` when it holds a dataset written by this function (its
            :data:`MARKER` file, the three split folders and generated image names, nothing
            else); any other non-empty folder is refused, never deleted.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    num_test_ids = num_ids // 2 if num_test_ids is None else num_test_ids
    if num_ids < 2 or num_test_ids < 1:
        raise ValueError(f"synthetic: need num_ids >= 2 and num_test_ids >= 1, got {num_ids} and {num_test_ids}")
    if num_ids + num_test_ids > 9999:
        raise ValueError("synthetic: pids have 4 digits, so num_ids + num_test_ids must be <= 9999")
    if num_cameras < 2 or images_per_camera < 2:
        raise ValueError(
            f"synthetic: need num_cameras >= 2 and images_per_camera >= 2 "
            f"(one query and at least one gallery image), got {num_cameras} and {images_per_camera}"
        )
    if num_distractors < 0 or height < 16 or width < 8:
        raise ValueError(f"synthetic: need num_distractors >= 0 and an image of at least 16x8, got {height}x{width}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise FileExistsError(f"synthetic: '{root}' exists and is not empty; choose another folder, or pass "
                                  "--overwrite (overwrite=True) to replace a dataset synth wrote there")
        foreign = _foreign_entry(root)
        if foreign is not None:
            raise FileExistsError(f"synthetic: refusing to overwrite '{root}': it is not only a dataset written by "
                                  f"synth ({foreign}); remove it yourself or choose another folder")
    settings = {"num_ids": num_ids, "num_test_ids": num_test_ids, "images_per_camera": images_per_camera,
                "num_cameras": num_cameras, "num_distractors": num_distractors, "height": height, "width": width,
                "seed": seed}

    # Separate streams, so e.g. the train identities do not change with num_test_ids.
    camera_rng, identity_rng, test_identity_rng, image_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    first_view = camera_rng.integers(len(VIEWS))
    cameras = [_draw_camera(camera_rng, VIEWS[(first_view + c) % len(VIEWS)]) for c in range(num_cameras)]
    train_ids = [_draw_identity(identity_rng) for _ in range(num_ids)]
    test_ids = [_draw_identity(test_identity_rng) for _ in range(num_test_ids)]

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for folder in FOLDERS:
            (staging / folder).mkdir()
        frame = [0] * num_cameras

        def write(folder: str, pid: int, person: _Identity, camid: int) -> None:
            crop = _render(person, cameras[camid], image_rng, height, width)
            crop.save(staging / folder / f"{pid:04d}_c{camid + 1}s1_{frame[camid]:06d}_00.png", compress_level=1)
            frame[camid] += 1

        for pid, person in enumerate(train_ids, start=1):
            for camid in range(num_cameras):
                for _ in range(images_per_camera):
                    write("bounding_box_train", pid, person, camid)
        for pid, person in enumerate(test_ids, start=num_ids + 1):
            for camid in range(num_cameras):
                for shot in range(images_per_camera):
                    write("query" if shot == 0 else "bounding_box_test", pid, person, camid)
        for _ in range(num_distractors):
            write("bounding_box_test", DISTRACTOR_PID, _draw_identity(image_rng), int(image_rng.integers(num_cameras)))
        marker = {"generator": "reid_prune.data.generate_synthetic", **settings}
        (staging / MARKER).write_text(json.dumps(marker) + "\n")

        if root.exists():
            # Move the old folder aside first, so root is never missing a complete dataset for long.
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.rename(root, old / root.name)
            os.rename(staging, root)
            shutil.rmtree(old)
        else:
            os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _foreign_entry(root: Path) -> str | None:
    """Why ``root`` is not exactly a dataset written by :func:`generate_synthetic`, or None when it is."""
    if not root.is_dir():
        return "it is a file"
    if not (root / MARKER).is_file():
        return f"no {MARKER} marker"
    for entry in root.iterdir():
        if entry.name == MARKER:
            continue
        if entry.name not in FOLDERS or not entry.is_dir():
            return f"it holds '{entry.name}'"
        for item in entry.iterdir():
            if not (item.is_file() and IMAGE_NAME.fullmatch(item.name)):
                return f"it holds '{entry.name}/{item.name}'"
    return None
