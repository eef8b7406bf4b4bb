"""Image sources and the streaming input pipeline: images read by index,
uint8 until the last map, the memory-mapped cache, photo files decoded as they
are read, per-worker shards of the training stream, and streaming evaluation,
each against an in-memory float reference."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dmfa_tf import baselines, evaluation, training
from dmfa_tf import data as datasets
from dmfa_tf.data import cache as data_cache
from dmfa_tf.data import photos as data_photos
from dmfa_tf.data import sources
from dmfa_tf.data import tfds as data_tfds


def _photo(path, seed):
    """A 178x218 JPEG (CelebA's size): a smooth colour field and a disc."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:218, 0:178]
    image = np.zeros((218, 178, 3))
    for c in range(3):
        image[..., c] = rng.random() * yy / 218 + rng.random() * xx / 178
    image[(yy - 100) ** 2 + (xx - 90) ** 2 < (20 + 30 * rng.random()) ** 2] = rng.random(3) * 2
    Image.fromarray(np.clip(image * 120, 0, 255).astype(np.uint8)).save(path, quality=92)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """12 photos with a partition file: 6 train, 3 validation, 3 test."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "img_align_celeba"
    folder.mkdir()
    lines = []
    for i in range(12):
        name = f"{i + 1:06d}.jpg"
        _photo(folder / name, i)
        lines.append(f"{name} {0 if i < 6 else 1 if i < 9 else 2}\n")
    (root / "list_eval_partition.txt").write_text("".join(lines))
    return root


def _pil_square(path, size):
    """The paper crop with Pillow: resize to round(1.875 S) square, centre S x S."""
    from PIL import Image

    resized = round(1.875 * size)
    offset = int(round((resized - size) / 2.0))
    image = Image.open(path).convert("RGB").resize((resized, resized), Image.BILINEAR)
    return np.asarray(image)[offset : offset + size, offset : offset + size]


def test_array_source_reads_rows_by_index_in_order():
    array = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    rows = [7, 2, 9, 0]
    source = sources.ArraySource(array, rows=rows)
    assert len(source) == 4 and source.shape == (4, 2, 2, 1) and source.dtype == tf.uint8
    read = np.stack(list(source.images().as_numpy_iterator()))
    np.testing.assert_array_equal(read, array[rows])
    np.testing.assert_array_equal(source.to_array(), array[rows])
    np.testing.assert_array_equal(source.to_float_array(), array[rows].astype(np.float32) / 255)
    np.testing.assert_array_equal(source.take(2).to_array(), array[[7, 2]])
    # Consecutive rows are a view of the array (a memmap stays a memmap).
    assert sources.ArraySource(array, rows=[3, 4, 5]).rows is None
    np.testing.assert_array_equal(sources.ArraySource(array, rows=[3, 4, 5]).to_array(), array[3:6])
    with pytest.raises(ValueError, match="row numbers below 10"):
        sources.ArraySource(array, rows=[3, 10])
    with pytest.raises(ValueError, match="uint8 or floats"):
        sources.ArraySource(np.zeros((2, 2, 2, 1), np.int32))
    with pytest.raises(ValueError, match="non-empty"):
        sources.ArraySource(np.zeros((0, 2, 2, 1), np.uint8))


def test_photo_folder_streams_from_a_memory_mapped_cache_or_the_files(photo_folder, tmp_path,
                                                                       monkeypatch):
    cache = tmp_path / "cache"
    cached = datasets.load_sources("celeb_a", str(photo_folder), cache=str(cache), verbose=0)
    (name,) = os.listdir(cache)
    assert name.endswith(".npy")
    assert isinstance(cached.train, sources.ArraySource)
    assert isinstance(cached.train.array, np.memmap)  # not read into memory
    assert [len(cached.train), len(cached.val), len(cached.test)] == [6, 3, 3]
    files = datasets.load_sources("celeb_a", str(photo_folder), cache=False, verbose=0)
    assert isinstance(files.train, sources.PhotoSource)
    arrays = datasets.load("celeb_a", str(photo_folder), cache=False, verbose=0)
    folder = photo_folder / "img_align_celeba"
    for split, first in (("train", 1), ("val", 7), ("test", 10)):
        from_cache = getattr(cached, split).to_array()
        assert from_cache.dtype == np.uint8
        np.testing.assert_array_equal(getattr(files, split).to_array(), from_cache)
        np.testing.assert_array_equal(getattr(arrays, split), from_cache.astype(np.float32) / 255)
        reference = _pil_square(folder / f"{first:06d}.jpg", 32).astype(int)
        assert np.abs(from_cache[0].astype(int) - reference).max() <= 2  # a grey level or two
    # The second load maps the cache file: nothing is decoded again.
    monkeypatch.setattr(data_photos, "_decode_photos", lambda *a, **k: pytest.fail("decoded again"))
    again = datasets.load_sources("celeb_a", str(photo_folder), cache=str(cache), verbose=0)
    np.testing.assert_array_equal(again.test.to_array(), cached.test.to_array())
    assert os.listdir(cache) == [name]


def test_a_models_own_data_are_loaded_as_its_config_names_them(photo_folder, tmp_path,
                                                               monkeypatch):
    """`load_model_sources` passes the config's size and crop (benchmarks score
    a saved model on its own faces with it)."""
    from PIL import Image

    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "cache"))
    config = {"dataset": "celeb_a", "data_dir": str(photo_folder), "image_size": 8,
              "crop": "aspect"}
    loaded = datasets.load_model_sources(config, splits=("test",))
    assert loaded.train is None and loaded.val is None
    test = loaded.test.to_array()
    assert test.shape == (3, 8, 8, 3)
    # The aspect crop by hand: the centre 178x178 square of photo 10, then 8x8.
    photo = Image.open(photo_folder / "img_align_celeba" / "000010.jpg").convert("RGB")
    square = photo.crop((0, 20, 178, 198)).resize((8, 8), Image.BILINEAR, reducing_gap=None)
    assert np.abs(test[0].astype(int) - np.asarray(square).astype(int)).max() <= 2
    paper = datasets.load_model_sources(dict(config, crop=None), splits=("test",))
    assert np.abs(paper.test.to_array()[0].astype(int) - test[0].astype(int)).max() > 20
    for bad in ({}, None, {"data_dir": str(photo_folder)}):
        with pytest.raises(ValueError, match="names no data set"):
            datasets.load_model_sources(bad)


@pytest.mark.parametrize("damage", ["not-an-image", "truncated"])
def test_a_photo_that_cannot_be_decoded_is_named(photo_folder, tmp_path, damage):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    paths = []
    for i in range(4):
        paths.append(folder / f"{i:06d}.jpg")
        paths[-1].write_bytes((photo_folder / "img_align_celeba" / "000001.jpg").read_bytes())
    good = paths[2].read_bytes()
    paths[2].write_bytes(b"not a photo at all" if damage == "not-an-image" else good[:200])
    source = sources.PhotoSource(paths, 32)
    with pytest.raises(ValueError, match=str(paths[2])):
        source.to_array()
    with pytest.raises(ValueError, match=str(paths[2])):  # the cache pass names it too
        datasets.load_sources("celeb_a", str(tmp_path), cache=str(tmp_path / "cache"), verbose=0)
    assert not os.listdir(tmp_path / "cache")  # no partial cache file left
    if damage == "not-an-image":  # while training from the files: the pipeline's error names it
        stream = training.training_data(source, "8x8", 4, seed=0)
        with pytest.raises(tf.errors.InvalidArgumentError, match=str(paths[2])):
            next(iter(stream))


def test_a_spilled_array_is_mapped_from_a_deleted_file():
    def decode(out):
        out[:] = np.arange(out.size, dtype=np.uint64).reshape(out.shape) % 251
        return out

    images = data_cache._cached({"k": 1}, "test", (3, 4, 4, 3), decode, cache=False, spill=True)
    assert isinstance(images, np.memmap) and not os.path.exists(images.filename)
    np.testing.assert_array_equal(images, decode(np.empty((3, 4, 4, 3), np.uint8)))


class _Context:
    """What `strategy.distribute_datasets_from_function` passes: pipeline `j`
    of `P`, one replica per pipeline."""

    def __init__(self, pipelines, pipeline):
        self.num_input_pipelines, self.input_pipeline_id = pipelines, pipeline

    def get_per_replica_batch_size(self, batch_size):
        return batch_size // self.num_input_pipelines


def test_worker_shards_of_the_training_stream_make_up_the_single_stream():
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 1), np.uint8)
    single = list(training.training_data(images, "3x3|dropout:0.5", 8, seed=4).take(6))
    shards = [list(training.training_data(images, "3x3|dropout:0.5", 8, seed=4,
                                          input_context=_Context(2, j)).take(6)) for j in (0, 1)]
    for step in range(6):  # 6 steps of 8 cross the 20-image passes
        for key in ("image", "mask"):
            joined = np.concatenate([shards[0][step][key], shards[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key].numpy())
    # uint8 until the last map: the same stream as the float images'.
    floats = list(training.training_data(images.astype(np.float32) / 255, "3x3|dropout:0.5", 8,
                                         seed=4).take(6))
    for a, b in zip(single, floats):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="multiple of the number of workers"):
        training.training_data(images, "3x3", 9, seed=0, input_context=_Context(2, 0))


def test_scores_from_a_source_equal_those_of_the_float_array():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (50, 8, 8, 3), np.uint8)
    test = rng.integers(0, 256, (9, 8, 8, 3), np.uint8)
    as_float = lambda x: x.astype(np.float32) / 255  # noqa: E731
    streamed = baselines.DiagonalGaussian.fit(sources.ArraySource(train))
    reference = baselines.DiagonalGaussian.fit(as_float(train))
    np.testing.assert_allclose(streamed.mean, reference.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(streamed.variance, reference.variance, rtol=0, atol=1e-12)
    expected = evaluation.score(reference, as_float(test), "4x4", seed=3, batch_size=4)
    masks = evaluation.seeded_masks(as_float(test), "4x4", seed=3)
    for mask in ("4x4", masks):
        got = evaluation.score(reference, sources.ArraySource(test[[0, 1, 2, 3, 4, 5, 6, 7, 8]]),
                               mask, seed=3, batch_size=4)
        for key in ("nll", "squared_error", "inside_50", "inside_90", "pit_counts"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)
        assert got["dequantization_step"][0] == pytest.approx(1 / 255)


class _FakeTfdsBuilder:
    """What `dmfa_tf.data.tfds._load_tfds` uses of a prepared TFDS celeb_a builder."""

    def __init__(self, folder, photos):
        from types import SimpleNamespace

        self.data_dir, self.photos = str(folder), photos
        self.info = SimpleNamespace(
            version="2.1.0",
            splits={split: SimpleNamespace(num_examples=len(paths)) for split, paths in photos.items()},
            features={},
        )

    def as_dataset(self, split, shuffle_files=False):
        decoded = [tf.io.decode_jpeg(tf.io.read_file(str(p)), dct_method="INTEGER_ACCURATE")
                   for p in self.photos[split]]
        return tf.data.Dataset.from_tensor_slices({"image": tf.stack(decoded)})


@pytest.mark.parametrize("cache", ["folder", "off"])
def test_tfds_celeb_a_streams_into_a_mapped_array(photo_folder, tmp_path, cache):
    folder = photo_folder / "img_align_celeba"
    names = sorted(os.listdir(folder))
    photos = {"train": [folder / n for n in names[:6]], "validation": [folder / n for n in names[6:9]],
              "test": [folder / n for n in names[9:]]}
    builder = _FakeTfdsBuilder(tmp_path, photos)
    where = str(tmp_path / "cache") if cache == "folder" else False
    found = data_tfds._load_tfds("celeb_a", builder, 32, "paper", where, 0, stream=True)
    arrays = data_tfds._load_tfds("celeb_a", builder, 32, "paper", where, 0)
    files = datasets.load_sources("celeb_a", str(photo_folder), cache=False, verbose=0)
    for split in ("train", "val", "test"):
        images = getattr(found, split)
        assert isinstance(images, np.memmap) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, getattr(files, split).to_array())
        np.testing.assert_array_equal(getattr(arrays, split), images.astype(np.float32) / 255)
    if cache == "folder":
        assert sorted(n.split("-")[2] for n in os.listdir(tmp_path / "cache")) == [
            "test", "train", "validation"]
    else:
        assert not os.path.exists(found.train.filename)  # a deleted temporary file
