"""Seeded, stateless masks for images, and the tf.data step that adds them.

A mask has the image's height and width and one channel: 1 marks an observed
pixel, 0 a missing one (scored by the loss), -1 an absent one (neither given to
the network nor scored; see `with_masks(..., nonfinite="absent")`).

Every generator is a pure function of a seed: `generator(height, width, seed)`
with `seed` an int `[2]` tensor returns the same mask for the same seed, on any
machine, inside or outside `tf.data`. `with_masks` seeds element `i` of a data
set with `(seed, i)`, so test masks are a function of (seed, example index) and
are identical for every model evaluated with the same seed; a training set that
is repeated before `with_masks` gets fresh masks in every epoch.

Generators can be written as short strings (the command line's `--mask`):

| spec | generator |
|---|---|
| `14x14` | `Rectangle(14, 14)`: a 14 x 14 hole, anywhere in the image |
| `14x14~2` | `Rectangle(14, 14, jitter=2)`: each side 12 to 16 |
| `14x14@paper` | `Rectangle(14, 14, placement="paper")`: the reference code's sampler |
| `dropout:0.5` | `PixelDropout(0.5)`: each pixel missing with probability 0.5 |
| `halves` / `halves:top,left` | `Halves(...)`: one half of the image missing |
| `14x14|dropout:0.5*2` | `Mixture(...)`: one of them per image, weights after `*` |
"""

import tensorflow as tf

from dmfa_tf.data import sources
from dmfa_tf.core.checks import check_positive_int, pixel_assertions

__all__ = [
    "Halves",
    "MaskGenerator",
    "Mixture",
    "PixelDropout",
    "Rectangle",
    "from_config",
    "parse",
    "with_masks",
]

_SALT = 0x6D61736B  # "mask"


class MaskGenerator:
    """Base class: a seeded function from an image size to a mask."""

    def __call__(self, height, width, seed):
        """Returns a `[height, width, 1]` float32 mask (1 observed, 0 missing).

        Args:
            height, width: Python ints, the image size.
            seed: int `[2]` tensor (or pair of ints); same seed, same mask.
        """
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        return self._generate(int(height), int(width), seed)

    def _generate(self, height, width, seed):
        raise NotImplementedError

    def spec(self):
        """The string `parse` turns back into this generator."""
        raise NotImplementedError

    def get_config(self):
        return {"spec": self.spec()}

    def __repr__(self):
        return f"{type(self).__name__}({self.spec()!r})"

    def __eq__(self, other):
        return isinstance(other, MaskGenerator) and self.spec() == other.spec()

    def __hash__(self):
        return hash(self.spec())


def _number(value):
    """Short text for a float that reads back as exactly the same float."""
    text = f"{value:g}"
    return text if float(text) == value else repr(float(value))


class Rectangle(MaskGenerator):
    """One rectangular hole of `height x width` pixels.

    Args:
        height, width: the hole's size in pixels.
        jitter: each side varies uniformly by up to this many pixels (an int,
            or a `(height_jitter, width_jitter)` pair); clipped to the image.
        placement: `"uniform"` puts the top-left corner uniformly in
            `[0, H - h] x [0, W - w]`, so the hole can touch every border.
            `"paper"` reproduces the reference code's sampler, whose exclusive
            upper bound `[0, H - h)` never lets the hole touch the last row or
            column (used to match the paper's numbers exactly).
    """

    def __init__(self, height, width, jitter=0, placement="uniform"):
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        if isinstance(jitter, int) and not isinstance(jitter, bool):
            jitter = (jitter, jitter)
        jitter = tuple(jitter)
        if len(jitter) != 2 or any(
            isinstance(j, bool) or not isinstance(j, int) or j < 0 for j in jitter
        ):
            raise ValueError(
                "`jitter` must be a non-negative int or a pair of them. "
                f"Received: jitter={jitter!r}"
            )
        self.jitter = jitter
        if placement not in ("uniform", "paper"):
            raise ValueError(
                f"`placement` must be 'uniform' or 'paper'. Received: placement={placement!r}"
            )
        self.placement = placement

    def spec(self):
        text = f"{self.height}x{self.width}"
        if self.jitter != (0, 0):
            jh, jw = self.jitter
            text += f"~{jh}" if jh == jw else f"~{jh}x{jw}"
        if self.placement != "uniform":
            text += f"@{self.placement}"
        return text

    def _generate(self, height, width, seed):
        if self.height > height or self.width > width:
            raise ValueError(
                f"A {self.height}x{self.width} hole does not fit in a "
                f"{height}x{width} image."
            )
        seeds = tf.random.experimental.stateless_split(seed, 4)
        sizes = []
        for i, (size, jitter, limit) in enumerate(
            [(self.height, self.jitter[0], height), (self.width, self.jitter[1], width)]
        ):
            if jitter:
                size = size + tf.random.stateless_uniform(
                    [], seeds[i], minval=-jitter, maxval=jitter + 1, dtype=tf.int32
                )
                size = tf.clip_by_value(size, 1, limit)
            sizes.append(tf.convert_to_tensor(size, tf.int32))
        corners = []
        for i, (size, limit) in enumerate(zip(sizes, (height, width))):
            # uniform: [0, limit - size]; paper: [0, limit - size), at least {0}
            top = limit - size + 1 if self.placement == "uniform" else limit - size
            top = tf.maximum(top, 1)
            corners.append(
                tf.random.stateless_uniform(
                    [], seeds[2 + i], minval=0, maxval=top, dtype=tf.int32
                )
            )
        rows = tf.range(height)[:, None]  # [H, 1]
        cols = tf.range(width)[None, :]  # [1, W]
        inside = (
            (rows >= corners[0])
            & (rows < corners[0] + sizes[0])
            & (cols >= corners[1])
            & (cols < corners[1] + sizes[1])
        )  # [H, W]
        return tf.cast(~inside, tf.float32)[..., None]


class PixelDropout(MaskGenerator):
    """Each pixel missing independently with probability `rate`."""

    def __init__(self, rate):
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"`rate` must be in [0, 1]. Received: rate={rate!r}")
        self.rate = float(rate)

    def spec(self):
        return f"dropout:{_number(self.rate)}"

    def _generate(self, height, width, seed):
        seed = tf.random.experimental.stateless_fold_in(seed, _SALT)
        uniform = tf.random.stateless_uniform([height, width, 1], seed)
        return tf.cast(uniform >= self.rate, tf.float32)


class Halves(MaskGenerator):
    """One half of the image missing, the side drawn uniformly from `sides`."""

    SIDES = ("top", "bottom", "left", "right")

    def __init__(self, sides=SIDES):
        if isinstance(sides, str):
            sides = (sides,)
        sides = tuple(sides)
        bad = [s for s in sides if s not in self.SIDES]
        if not sides or bad:
            raise ValueError(
                f"`sides` must be a non-empty subset of {self.SIDES}. Received: sides={sides!r}"
            )
        self.sides = sides

    def spec(self):
        return "halves" if self.sides == self.SIDES else "halves:" + ",".join(self.sides)

    def _generate(self, height, width, seed):
        rows = tf.range(height)[:, None] + tf.zeros([1, width], tf.int32)  # [H, W]
        cols = tf.range(width)[None, :] + tf.zeros([height, 1], tf.int32)  # [H, W]
        missing = {
            "top": rows < height // 2,
            "bottom": rows >= height - height // 2,
            "left": cols < width // 2,
            "right": cols >= width - width // 2,
        }
        candidates = tf.stack([missing[s] for s in self.sides])  # [S, H, W]
        choice = tf.random.stateless_uniform(
            [], seed, minval=0, maxval=len(self.sides), dtype=tf.int32
        )
        return tf.cast(~tf.gather(candidates, choice), tf.float32)[..., None]


class Mixture(MaskGenerator):
    """One of several generators per image, chosen with the given weights."""

    def __init__(self, generators, weights=None):
        generators = list(generators)
        if not generators or not all(isinstance(g, MaskGenerator) for g in generators):
            raise ValueError(
                "`generators` must be a non-empty list of MaskGenerator. "
                f"Received: generators={generators!r}"
            )
        weights = [1.0] * len(generators) if weights is None else [float(w) for w in weights]
        if len(weights) != len(generators) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                "`weights` must be one non-negative number per generator, not all 0. "
                f"Received: weights={weights!r}"
            )
        self.generators = generators
        self.weights = weights

    def spec(self):
        parts = []
        for generator, weight in zip(self.generators, self.weights):
            parts.append(generator.spec() + ("" if weight == 1.0 else f"*{_number(weight)}"))
        return "|".join(parts)

    def _generate(self, height, width, seed):
        seeds = tf.random.experimental.stateless_split(seed, len(self.generators) + 1)
        candidates = tf.stack(
            [g._generate(height, width, seeds[i + 1]) for i, g in enumerate(self.generators)]
        )  # [G, H, W, 1]
        log_weights = tf.math.log(tf.constant([self.weights], tf.float32))  # [1, G]
        choice = tf.random.stateless_categorical(log_weights, 1, seeds[0])[0, 0]
        return tf.gather(candidates, choice)


def parse(spec):
    """Turns a spec string (see the module docstring) into a `MaskGenerator`.

    A `MaskGenerator` is returned as it is.
    """
    if isinstance(spec, MaskGenerator):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A mask spec must be a non-empty string. Received: {spec!r}")
    parts = [p.strip() for p in spec.split("|")]
    if len(parts) > 1:
        generators, weights = [], []
        for part in parts:
            text, _, weight = part.partition("*")
            generators.append(_parse_one(text.strip(), spec))
            try:
                weights.append(float(weight) if weight else 1.0)
            except ValueError:
                raise ValueError(f"Bad weight {weight!r} in mask spec {spec!r}.") from None
        try:
            return Mixture(generators, weights)
        except ValueError as error:
            raise ValueError(f"Cannot read mask spec {spec!r}: {error}") from None
    return _parse_one(parts[0], spec)


def _parse_one(text, spec):
    try:
        if text.startswith("dropout:"):
            return PixelDropout(float(text[len("dropout:"):]))
        if text == "halves":
            return Halves()
        if text.startswith("halves:"):
            return Halves(tuple(s.strip() for s in text[len("halves:"):].split(",")))
        text, _, placement = text.partition("@")
        text, _, jitter = text.partition("~")
        height, width = (int(v) for v in text.lower().split("x"))
        if jitter:
            jitter = tuple(int(v) for v in jitter.lower().split("x"))
            jitter = jitter[0] if len(jitter) == 1 else jitter
        return Rectangle(height, width, jitter=jitter or 0, placement=placement or "uniform")
    except ValueError as error:
        raise ValueError(
            f"Cannot read mask spec {spec!r}: {error}. Expected e.g. '14x14', "
            "'14x14~2', '14x14@paper', 'dropout:0.5', 'halves', or several "
            "joined by '|' with optional weights '*2'."
        ) from None


def from_config(config):
    """Inverse of `MaskGenerator.get_config()`."""
    return parse(config["spec"])


def with_masks(dataset, generator, seed, nonfinite="error", indexed=False, bounded=True):
    """Adds a seeded mask to every image of a data set.

    Args:
        dataset: `tf.data.Dataset` of images `[H, W, C]` with static height and
            width: floats in [0, 1], or uint8 (8-bit pixels, scaled to [0, 1]
            here: `sources.to_float`). With `indexed=True`, `(i, image)` pairs
            whose `i` seeds the mask (a stream sharded across workers keeps
            each element's position in the whole stream).
        generator: a `MaskGenerator` or a spec string.
        seed: int; element `i` (counted from the start of `dataset`) gets the
            mask `generator(H, W, seed=(seed, i))`.
        nonfinite: what to do with NaN or inf pixels. `"error"`: stop with an
            error that names the element. `"absent"`: mark them -1 in the mask
            (absent, not scored) and zero them in the image, which trains on
            incomplete data; the mask then has the image's channels.
        bounded: values are pixels in [0, 1] (True); False for unbounded
            values (standardised table cells, `dmfa_tf.tabular`).

    Returns:
        A data set of `{"image": [H, W, C], "mask": [H, W, 1 or C]}`. With
        `bounded`, values outside [0, 1] stop the pipeline with an error
        naming the element.
    """
    generator = parse(generator)
    if nonfinite not in ("error", "absent"):
        raise ValueError(
            f"`nonfinite` must be 'error' or 'absent'. Received: nonfinite={nonfinite!r}"
        )
    spec = dataset.element_spec[1] if indexed else dataset.element_spec
    shape = spec.shape
    if shape.rank != 3 or shape[0] is None or shape[1] is None:
        raise ValueError(
            "`with_masks` needs images of shape [H, W, C] with static H and W. "
            f"Received element spec: {dataset.element_spec}"
        )
    height, width = int(shape[0]), int(shape[1])
    base_seed = tf.constant(int(seed), tf.int64)

    def add_mask(index, image):
        image = sources.to_float(image)
        finite = tf.math.is_finite(image)
        clean = tf.where(finite, image, 0.0)
        checks = pixel_assertions(
            image, bounded=bounded, finite=nonfinite == "error", where=" at index", data=(index,)
        )
        with tf.control_dependencies(checks):
            mask = generator(height, width, tf.stack([base_seed, index]))
        if nonfinite == "absent":
            mask = tf.where(finite, mask, -1.0)  # [H, W, C]
        return {"image": clean, "mask": mask}

    data = dataset if indexed else dataset.enumerate()
    return data.map(add_mask, num_parallel_calls=tf.data.AUTOTUNE)
