"""Mask generators, their specs, and `with_masks`, against hand-computed counts
and statistical bounds derived from the number of samples."""

import json
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from dmfa_tf import masks


def _sample(generator, height, width, count, first=0):
    """Masks `[count, H, W]` for the seeds `(first, 0) ... (first, count - 1)`,
    drawn in one traced graph (the generator is a pure function of the seed)."""
    seeds = tf.stack(
        [tf.fill([count], tf.constant(first, tf.int64)), tf.range(count, dtype=tf.int64)],
        axis=1,
    )

    @tf.function
    def draw(seeds):
        return tf.map_fn(
            lambda seed: generator(height, width, seed),
            seeds,
            fn_output_signature=tf.float32,
            parallel_iterations=64,
        )

    out = draw(seeds).numpy()
    assert out.shape == (count, height, width, 1)
    return out[..., 0]


def _hole(mask):
    """(top, left, height, width, zeros) of the missing pixels' bounding box."""
    missing = mask == 0
    rows = np.flatnonzero(missing.any(axis=1))
    cols = np.flatnonzero(missing.any(axis=0))
    return (
        rows[0],
        cols[0],
        rows[-1] - rows[0] + 1,
        cols[-1] - cols[0] + 1,
        int(missing.sum()),
    )


def _assert_roughly_uniform(values, support):
    """Every value of `support` is seen, nothing else, and each count is within
    5 binomial standard deviations of `n / len(support)`."""
    counts = {v: 0 for v in support}
    for v in values:
        assert v in counts, f"value {v} outside {sorted(counts)}"
        counts[v] += 1
    n, p = len(values), 1.0 / len(support)
    sigma = math.sqrt(n * p * (1 - p))
    for v, c in counts.items():
        assert abs(c - n * p) <= 5 * sigma, (v, c, n * p, counts)


def _describe(generator):
    """A generator's full state, independent of its `spec()` (which `==` uses)."""
    if isinstance(generator, masks.Mixture):
        return ("Mixture", [_describe(g) for g in generator.generators], generator.weights)
    return (type(generator).__name__, sorted(vars(generator).items()))


# --- Rectangle -------------------------------------------------------------


@pytest.mark.parametrize(
    "hole, image",
    [
        ((14, 14), (28, 28)),
        ((3, 5), (10, 8)),
        ((7, 2), (7, 9)),
        ((1, 1), (5, 5)),
        ((5, 7), (5, 7)),  # the whole image
        ((28, 28), (28, 28)),
    ],
)
def test_rectangle_is_one_contiguous_hole(hole, image):
    h, w = hole
    generator = masks.Rectangle(h, w)
    for seed in range(5):
        mask = generator(*image, seed=[seed, 7])
        assert mask.shape == (*image, 1)
        assert mask.dtype == tf.float32
        mask = mask.numpy()[..., 0]
        assert set(np.unique(mask)) <= {0.0, 1.0}
        top, left, box_h, box_w, zeros = _hole(mask)
        assert zeros == h * w
        # h*w zeros inside an h x w bounding box: the box is filled.
        assert (box_h, box_w) == (h, w)
        assert 0 <= top <= image[0] - h and 0 <= left <= image[1] - w


@pytest.mark.parametrize(
    "placement, last_corner",
    [
        ("uniform", 14),  # [0, 28 - 14]: the hole can touch every border
        ("paper", 13),  # np.random.randint(0, 28 - 14): 14 is never drawn
    ],
)
def test_rectangle_placement(placement, last_corner):
    samples = _sample(masks.Rectangle(14, 14, placement=placement), 28, 28, 2000)
    holes = [_hole(m) for m in samples]
    assert all(h[2:] == (14, 14, 196) for h in holes)
    tops = [h[0] for h in holes]
    lefts = [h[1] for h in holes]
    _assert_roughly_uniform(tops, range(last_corner + 1))
    _assert_roughly_uniform(lefts, range(last_corner + 1))
    # Top and left are independent: they agree with probability 1 / (last + 1).
    n, p = len(tops), 1 / (last_corner + 1)
    same = sum(t == l for t, l in zip(tops, lefts))
    assert abs(same - n * p) <= 5 * math.sqrt(n * p * (1 - p)), same
    # Borders: the first row/column is always reachable, the last only uniformly.
    assert (samples[:, 0, :] == 0).any() and (samples[:, :, 0] == 0).any()
    touches_last = (samples[:, -1, :] == 0).any() and (samples[:, :, -1] == 0).any()
    assert touches_last == (placement == "uniform")


@pytest.mark.parametrize("placement", ["uniform", "paper"])
def test_rectangle_placement_of_a_full_size_hole(placement):
    samples = _sample(masks.Rectangle(6, 4, placement=placement), 6, 4, 20)
    assert (samples == 0).all()


def test_rectangle_jitter_sizes():
    samples = _sample(masks.Rectangle(6, 6, jitter=2), 20, 20, 500)
    holes = [_hole(m) for m in samples]
    assert all(zeros == h * w for _, _, h, w, zeros in holes)  # still one rectangle
    _assert_roughly_uniform([h[2] for h in holes], range(4, 9))
    _assert_roughly_uniform([h[3] for h in holes], range(4, 9))


def test_rectangle_jitter_pair():
    samples = _sample(masks.Rectangle(6, 5, jitter=(0, 2)), 20, 20, 300)
    holes = [_hole(m) for m in samples]
    assert {h[2] for h in holes} == {6}
    _assert_roughly_uniform([h[3] for h in holes], range(3, 8))
    samples = _sample(masks.Rectangle(4, 9, jitter=(1, 3)), 20, 20, 300)
    holes = [_hole(m) for m in samples]
    assert {h[2] for h in holes} == {3, 4, 5}
    assert {h[3] for h in holes} == set(range(6, 13))


def test_rectangle_jitter_is_clipped_to_the_image():
    # 6 +- 3 in a 7 x 7 image: 3..9 clipped to 3..7, so 7 has probability 3/7.
    samples = _sample(masks.Rectangle(6, 6, jitter=3), 7, 7, 700)
    heights = np.array([_hole(m)[2] for m in samples])
    assert set(heights) == {3, 4, 5, 6, 7}
    n, p = len(heights), 3 / 7
    assert abs((heights == 7).sum() - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    # 2 +- 3: -1..5 clipped to 1..5, so 1 has probability 3/7; never empty.
    samples = _sample(masks.Rectangle(2, 2, jitter=3), 10, 10, 700)
    holes = [_hole(m) for m in samples]
    widths = np.array([h[3] for h in holes])
    assert set(widths) == {1, 2, 3, 4, 5}
    assert abs((widths == 1).sum() - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    assert all(zeros == h * w for _, _, h, w, zeros in holes)


@pytest.mark.parametrize("hole, image", [((30, 10), (28, 28)), ((5, 29), (28, 28)), ((9, 9), (8, 9))])
def test_hole_larger_than_the_image(hole, image):
    with pytest.raises(ValueError) as info:
        masks.Rectangle(*hole)(*image, seed=[0, 0])
    message = str(info.value)
    assert re.search(rf"\b{hole[0]}\s*x\s*{hole[1]}\b", message), message
    assert re.search(rf"\b{image[0]}\s*x\s*{image[1]}\b", message), message


# --- PixelDropout ----------------------------------------------------------


@pytest.mark.parametrize("rate", [0.05, 0.25, 0.5, 0.9])
def test_pixel_dropout_rate(rate):
    size = 512
    for seed in range(2):
        mask = masks.PixelDropout(rate)(size, size, seed=[seed, 3])
        assert mask.shape == (size, size, 1) and mask.dtype == tf.float32
        mask = mask.numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        n = size * size
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs((mask == 0).mean() - rate) <= 5 * sigma
        # No spatial pattern: each half of the image has the same rate.
        for half in (mask[: size // 2], mask[:, size // 2 :]):
            assert abs((half == 0).mean() - rate) <= 5 * sigma * math.sqrt(2)


@pytest.mark.parametrize("rate, value", [(0, 1.0), (0.0, 1.0), (1, 0.0), (1.0, 0.0)])
def test_pixel_dropout_extremes(rate, value):
    samples = _sample(masks.PixelDropout(rate), 16, 12, 50)
    assert (samples == value).all()


# --- Halves ----------------------------------------------------------------

# Hand-computed: the missing rows or columns of each side, for odd and even sizes.
HALVES = {
    (7, 9): {
        "top": ("rows", [0, 1, 2]),
        "bottom": ("rows", [4, 5, 6]),
        "left": ("cols", [0, 1, 2, 3]),
        "right": ("cols", [5, 6, 7, 8]),
    },
    (8, 6): {
        "top": ("rows", [0, 1, 2, 3]),
        "bottom": ("rows", [4, 5, 6, 7]),
        "left": ("cols", [0, 1, 2]),
        "right": ("cols", [3, 4, 5]),
    },
}


def _half_mask(size, side):
    axis, missing = HALVES[size][side]
    mask = np.ones(size, np.float32)
    if axis == "rows":
        mask[missing, :] = 0
    else:
        mask[:, missing] = 0
    return mask


def _sides(samples, size):
    """The side each sampled mask removes (fails on anything else)."""
    found = []
    for mask in samples:
        matches = [s for s in HALVES[size] if np.array_equal(mask, _half_mask(size, s))]
        assert len(matches) == 1, mask
        found.append(matches[0])
    return found


@pytest.mark.parametrize("size", sorted(HALVES))
def test_halves_all_sides(size):
    samples = _sample(masks.Halves(), *size, 400)
    _assert_roughly_uniform(_sides(samples, size), ["top", "bottom", "left", "right"])


@pytest.mark.parametrize(
    "sides",
    [("top", "left"), ("bottom", "right", "left"), ("right",), "bottom"],
)
def test_halves_subset_of_sides(sides):
    expected = [sides] if isinstance(sides, str) else list(sides)
    samples = _sample(masks.Halves(sides), 7, 9, 300)
    _assert_roughly_uniform(_sides(samples, (7, 9)), expected)


# --- Mixture ---------------------------------------------------------------


def test_mixture_weights():
    # 2x2 (4 missing) with weight 3, 3x3 (9 missing) with weight 1.
    generator = masks.Mixture([masks.Rectangle(2, 2), masks.Rectangle(3, 3)], [3, 1])
    samples = _sample(generator, 10, 10, 2000)
    missing = (samples == 0).sum(axis=(1, 2))
    assert set(missing) == {4, 9}
    n, p = len(missing), 0.75
    assert abs((missing == 4).sum() - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_mixture_default_and_zero_weights():
    three = [masks.PixelDropout(0.0), masks.Rectangle(1, 1), masks.Rectangle(2, 1)]
    samples = _sample(masks.Mixture(three), 6, 6, 600)
    _assert_roughly_uniform(list((samples == 0).sum(axis=(1, 2))), [0, 1, 2])
    samples = _sample(masks.Mixture(three, [0, 2, 0]), 6, 6, 200)
    assert ((samples == 0).sum(axis=(1, 2)) == 1).all()


# --- Determinism -----------------------------------------------------------

GENERATORS = {
    "rectangle": (masks.Rectangle(14, 14), 0.9),
    "jitter": (masks.Rectangle(10, 12, jitter=(2, 3), placement="paper"), 0.9),
    "dropout": (masks.PixelDropout(0.5), 1.0),
    # 4 equally likely outcomes: a pair of seeds agrees with probability 1/4.
    "halves": (masks.Halves(), 0.5),
    "mixture": (masks.Mixture([masks.Rectangle(5, 5), masks.PixelDropout(0.3)], [1, 2]), 0.9),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_mask(name):
    generator, _ = GENERATORS[name]
    fresh = tf.function(lambda seed: generator(28, 28, seed))
    for seed in [(0, 0), (123, 4), (-5, 2**40)]:
        first = generator(28, 28, seed).numpy()
        np.testing.assert_array_equal(first, generator(28, 28, seed).numpy())
        np.testing.assert_array_equal(first, generator(28, 28, list(seed)).numpy())
        np.testing.assert_array_equal(
            first, generator(28, 28, tf.constant(seed, tf.int64)).numpy()
        )
        np.testing.assert_array_equal(first, fresh(tf.constant(seed, tf.int64)).numpy())
    np.testing.assert_array_equal(
        generator(28, 28, (3, 1)).numpy(),
        generator(28, 28, tf.constant([3, 1], tf.int32)).numpy(),
    )


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_different_seeds_different_masks(name):
    generator, min_fraction = GENERATORS[name]
    count = 100
    base = _sample(generator, 28, 28, count + 1, first=0)
    other_first = _sample(generator, 28, 28, count, first=1)
    # Neighbouring second components, and the same second component with
    # another first component: both parts of the seed matter.
    for a, b in [(base[:-1], base[1:]), (base[:-1], other_first)]:
        differ = np.mean([not np.array_equal(x, y) for x, y in zip(a, b)])
        assert differ >= min_fraction, differ


# --- Specs -----------------------------------------------------------------

SPECS = {
    "14x14": masks.Rectangle(14, 14),
    "14x14~2": masks.Rectangle(14, 14, jitter=(2, 2)),
    "3x5~1x2": masks.Rectangle(3, 5, jitter=(1, 2)),
    "14x14@paper": masks.Rectangle(14, 14, placement="paper"),
    "2x9~3@paper": masks.Rectangle(2, 9, jitter=3, placement="paper"),
    "dropout:0.25": masks.PixelDropout(0.25),
    "halves": masks.Halves(("top", "bottom", "left", "right")),
    "halves:top,left": masks.Halves(("top", "left")),
    "14x14|dropout:0.5*2": masks.Mixture(
        [masks.Rectangle(14, 14), masks.PixelDropout(0.5)], [1.0, 2.0]
    ),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_parse_round_trip(spec):
    generator = masks.parse(spec)
    assert _describe(generator) == _describe(SPECS[spec])
    assert generator.spec() == spec
    assert _describe(masks.parse(generator.spec())) == _describe(generator)
    assert masks.parse(generator) is generator
    config = json.loads(json.dumps(generator.get_config()))
    assert _describe(masks.from_config(config)) == _describe(generator)


def test_parse_detail():
    assert masks.parse("3x5~1x2").jitter == (1, 2)
    assert masks.parse("14x14~2").jitter == (2, 2)
    assert masks.parse("14x14").jitter == (0, 0)
    assert masks.parse("halves:top,left").sides == ("top", "left")
    mixture = masks.parse("14x14|dropout:0.5*2")
    assert isinstance(mixture, masks.Mixture)
    assert mixture.weights == [1.0, 2.0]
    assert isinstance(mixture.generators[1], masks.PixelDropout)
    assert mixture.generators[1].rate == 0.5


@pytest.mark.parametrize(
    "generator",
    [
        masks.PixelDropout(1 / 3),
        masks.PixelDropout(0.123456789),
        masks.Mixture([masks.Rectangle(3, 3), masks.Halves()], [1 / 3, 2 / 3]),
    ],
    ids=["dropout-third", "dropout-digits", "mixture-thirds"],
)
def test_config_round_trip_is_exact(generator):
    """`from_config` is the inverse of `get_config`: no precision is lost."""
    config = json.loads(json.dumps(generator.get_config()))
    assert _describe(masks.from_config(config)) == _describe(generator)
    assert _describe(masks.parse(generator.spec())) == _describe(generator)


@pytest.mark.parametrize(
    "spec",
    ["", "   ", "abc", "0x3", "14x", "x14", "14x14x2", "14x14@corner", "14x14~-1",
     "dropout:2", "dropout:abc", "halves:middle", "4x4*x|halves"],
)
def test_parse_bad_specs(spec):
    with pytest.raises(ValueError) as info:
        masks.parse(spec)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("spec", [None, 14, 1.5])
def test_parse_non_strings(spec):
    with pytest.raises(ValueError):
        masks.parse(spec)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: masks.Rectangle(0, 3), r"height\W{0,3}0\b"),
        (lambda: masks.Rectangle(3, -2), r"width\W{0,3}-2\b"),
        (lambda: masks.Rectangle(2.5, 3), r"2\.5"),
        (lambda: masks.Rectangle(3, 3, jitter=-1), r"-1\b"),
        (lambda: masks.Rectangle(3, 3, jitter=(1, 2, 3)), r"\(1, 2, 3\)"),
        (lambda: masks.Rectangle(3, 3, placement="foo"), r"foo"),
        (lambda: masks.PixelDropout(1.5), r"1\.5"),
        (lambda: masks.PixelDropout(-0.1), r"-0\.1"),
        (lambda: masks.Halves(["diagonal"]), r"diagonal"),
        (lambda: masks.Halves([]), r"sides"),
        (lambda: masks.Mixture([]), r"generators\W{0,3}\[\]"),
        (lambda: masks.Mixture(["14x14"]), r"14x14"),
        (lambda: masks.Mixture([masks.Halves()], [1, 2]), r"\[1\.0, 2\.0\]"),
        (lambda: masks.Mixture([masks.Halves(), masks.Halves()], [0, 0]), r"\[0\.0, 0\.0\]"),
        (lambda: masks.Mixture([masks.Halves(), masks.Halves()], [1, -1]), r"-1"),
    ],
)
def test_constructor_errors_name_the_bad_value(make, pattern):
    with pytest.raises(ValueError) as info:
        make()
    assert re.search(pattern, str(info.value)), str(info.value)


# --- with_masks ------------------------------------------------------------


def _images(count, height, width, channels, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, height, width, channels)).astype(
        np.float32
    )


def _dataset(images):
    return tf.data.Dataset.from_tensor_slices(images)


def test_with_masks_seeds_element_i_with_seed_and_i():
    images = _images(12, 9, 7, 3)
    generator = masks.parse("3x4~1|dropout:0.3")
    data = masks.with_masks(_dataset(images), generator, seed=42)
    assert set(data.element_spec) == {"image", "mask"}
    assert data.element_spec["image"].shape == (9, 7, 3)
    assert data.element_spec["mask"].shape == (9, 7, 1)
    assert data.element_spec["image"].dtype == tf.float32
    assert data.element_spec["mask"].dtype == tf.float32
    elements = list(data)
    assert len(elements) == 12
    for i, element in enumerate(elements):
        assert set(element) == {"image", "mask"}
        np.testing.assert_array_equal(element["image"].numpy(), images[i])
        np.testing.assert_array_equal(
            element["mask"].numpy(), generator(9, 7, seed=[42, i]).numpy()
        )
    # A spec string and a generator give the same masks; a second pass too.
    again = list(masks.with_masks(_dataset(images), "3x4~1|dropout:0.3", seed=42))
    for first, second in zip(elements, again):
        np.testing.assert_array_equal(first["mask"].numpy(), second["mask"].numpy())
    second_pass = list(data)
    for first, second in zip(elements, second_pass):
        np.testing.assert_array_equal(first["mask"].numpy(), second["mask"].numpy())


def test_with_masks_repeated_data_gets_fresh_masks():
    count = 20
    images = _images(count, 28, 28, 1)
    generator = masks.Rectangle(14, 14)
    elements = list(masks.with_masks(_dataset(images).repeat(2), generator, seed=7))
    assert len(elements) == 2 * count
    differ = 0
    for i in range(count):
        first, second = elements[i], elements[i + count]
        np.testing.assert_array_equal(first["image"].numpy(), second["image"].numpy())
        np.testing.assert_array_equal(
            second["mask"].numpy(), generator(28, 28, seed=[7, i + count]).numpy()
        )
        differ += not np.array_equal(first["mask"].numpy(), second["mask"].numpy())
    # Two uniform 14x14 holes coincide with probability 1/225.
    assert differ >= 0.9 * count


def test_with_masks_seed_changes_masks():
    images = _images(10, 28, 28, 1)
    a = list(masks.with_masks(_dataset(images), "14x14", seed=0))
    b = list(masks.with_masks(_dataset(images), "14x14", seed=1))
    differ = sum(not np.array_equal(x["mask"], y["mask"]) for x, y in zip(a, b))
    assert differ >= 8


def test_with_masks_accepts_the_unit_interval_bounds():
    images = np.zeros((3, 4, 4, 1), np.float32)
    images[1] = 1.0
    elements = list(masks.with_masks(_dataset(images), "dropout:0.5", seed=0))
    assert len(elements) == 3
    np.testing.assert_array_equal(elements[1]["image"].numpy(), np.ones((4, 4, 1)))


@pytest.mark.parametrize("value", [1.5, -0.25, 255.0])
@pytest.mark.parametrize("nonfinite", ["error", "absent"])
def test_with_masks_rejects_values_outside_unit_interval(value, nonfinite):
    images = _images(20, 6, 5, 1)
    images[13, 2, 3, 0] = value
    data = masks.with_masks(_dataset(images), "2x2", seed=0, nonfinite=nonfinite)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(data)
    message = str(info.value)
    assert "[0, 1]" in message
    assert re.search(r"index\D{0,6}13\b", message), message


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_with_masks_rejects_nonfinite_pixels(value, word):
    images = _images(8, 6, 5, 2)
    images[5, 0, 4, 1] = value
    data = masks.with_masks(_dataset(images), "2x2", seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(data)
    message = str(info.value)
    assert word in message
    assert re.search(r"index\D{0,6}5\b", message), message


def test_with_masks_nonfinite_absent():
    images = _images(4, 6, 5, 3)
    clean = images.copy()
    images[2, 1, 3, 2] = np.nan
    images[2, 4, 0, 0] = np.inf
    images[3, 5, 4, 1] = -np.inf
    generator = masks.Rectangle(3, 2)
    data = masks.with_masks(_dataset(images), generator, seed=9, nonfinite="absent")
    assert data.element_spec["mask"].shape == (6, 5, 3)
    elements = list(data)
    absent = {2: [(1, 3, 2), (4, 0, 0)], 3: [(5, 4, 1)]}
    for i, element in enumerate(elements):
        image, mask = element["image"].numpy(), element["mask"].numpy()
        assert mask.shape == (6, 5, 3) and image.shape == (6, 5, 3)
        expected_mask = np.repeat(generator(6, 5, seed=[9, i]).numpy(), 3, axis=-1)
        expected_image = clean[i].copy()
        for where in absent.get(i, []):
            expected_mask[where] = -1.0
            expected_image[where] = 0.0
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_array_equal(image, expected_image)
        assert (mask == -1).sum() == len(absent.get(i, []))


def test_with_masks_bad_nonfinite_option():
    with pytest.raises(ValueError, match="bogus"):
        masks.with_masks(_dataset(_images(2, 4, 4, 1)), "2x2", seed=0, nonfinite="bogus")


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 8), (3, 2, 8, 8, 1)])
def test_with_masks_needs_rank_3_images(shape):
    data = _dataset(np.zeros(shape, np.float32))
    with pytest.raises(ValueError):
        masks.with_masks(data, "2x2", seed=0)


def test_with_masks_needs_static_height_and_width():
    data = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((4, 4, 1), np.float32)]),
        output_signature=tf.TensorSpec([None, None, 1], tf.float32),
    )
    with pytest.raises(ValueError):
        masks.with_masks(data, "2x2", seed=0)


def test_with_masks_hole_larger_than_images():
    with pytest.raises(ValueError, match=r"9\s*x\s*3"):
        list(masks.with_masks(_dataset(_images(2, 8, 8, 1)), "9x3", seed=0))


def test_bad_mixture_weights_name_the_spec():
    with pytest.raises(ValueError, match=r"4x4\|halves\*-1"):
        masks.parse("4x4|halves*-1")
    with pytest.raises(ValueError, match=r"4x4\*0\|halves\*0"):
        masks.parse("4x4*0|halves*0")
