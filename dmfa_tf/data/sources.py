"""Image sources: one split of a data set, read by index inside `tf.data`.

Training and evaluation read images through a source, so no float copy of a
split is ever held in memory:

- `ArraySource` wraps an array: in memory (the small data sets, `.npz`
  files) or **memory-mapped** (the uint8 cache of decoded photos that
  `dmfa_tf.data.load_sources` writes). Batches of indices are gathered with
  one `tf.numpy_function` call each, so the array is not copied into the graph.
- `PhotoSource` reads, decodes, crops and resizes photo files when they are
  read: memory does not grow with the number of photos.

Images stay in their stored type (uint8 for 8-bit data) until the last map of
the pipeline: `to_float` (`x / 255`), which `dmfa_tf.masks.with_masks` applies.

`read(dataset)` maps a data set of `{"index": i, ...}` dicts to
`{"image": image_i, ...}` in the same order (deterministic), so the streams
built on it are the same however they are read.
"""

import os

import numpy as np
import tensorflow as tf

__all__ = [
    "ArraySource",
    "ImageSource",
    "PhotoSource",
    "as_source",
    "decode_photo",
    "square_photo",
    "to_float",
    "write_array",
]

READ_BATCH = 256  # indices gathered per numpy_function call
PAPER_RESIZE_RATIO = 1.875  # the paper's CelebA crop: resize to round(1.875 S), crop S
_PROGRESS_THRESHOLD = 1000


def to_float(image):
    """uint8 pixels to float32 in [0, 1] (`x / 255`); float images unchanged
    (cast to float32)."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


class ImageSource:
    """A split of `len(source)` images of shape `image_shape`, stored as
    `dtype` (uint8, or float32 in [0, 1]); see the module docstring."""

    image_shape = None
    dtype = None

    def __len__(self):
        raise NotImplementedError

    def read(self, dataset):
        """`{"index": i, ...}` elements to `{"image": image_i, ...}`, in order."""
        raise NotImplementedError

    def take(self, count):
        """The first `count` images (all when `count` is None)."""
        raise NotImplementedError

    def to_array(self, verbose=0):
        """All the images as one numpy array of the stored type."""
        raise NotImplementedError

    @property
    def shape(self):
        return (len(self),) + tuple(self.image_shape)

    @property
    def nbytes(self):
        """Bytes of the images in their stored type."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype.as_numpy_dtype).itemsize

    def images(self, start=0, stop=None):
        """A `tf.data.Dataset` of the images `start:stop`, in order, stored type."""
        stop = len(self) if stop is None else min(int(stop), len(self))
        data = tf.data.Dataset.range(int(start), stop).map(lambda i: {"index": i})
        return self.read(data).map(lambda element: element["image"])

    def to_float_array(self, verbose=0):
        """All the images as float32 in [0, 1] (the in-memory form `dmfa_tf.data.load`
        returns)."""
        array = self.to_array(verbose)
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255.0)
        return np.asarray(array, np.float32)


class ArraySource(ImageSource):
    """Images of an `[n, H, W, C]` array (uint8, or floats in [0, 1]), which may
    be a `numpy.memmap`: only the rows read are paged in. `rows` (optional)
    selects and orders the rows of `array` that make the source, without
    copying them: image `i` is `array[rows[i]]`."""

    def __init__(self, array, rows=None):
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.ndim != 4 or not len(array):
            raise ValueError(
                f"An image source needs a non-empty [n, H, W, C] array. Received: shape={array.shape}"
            )
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            if rows.ndim != 1 or not len(rows) or rows.min() < 0 or rows.max() >= len(array):
                raise ValueError(
                    f"`rows` must be a non-empty list of row numbers below {len(array)}."
                )
            if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                array, rows = array[rows[0] : rows[0] + len(rows)], None  # a view
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(
                    f"Images must be uint8 or floats in [0, 1]. Received dtype {array.dtype}."
                )
            if array.dtype != np.float32:
                array = array.astype(np.float32)
        self.array = array
        self.rows = rows
        self.image_shape = tuple(int(s) for s in array.shape[1:])
        self.dtype = tf.as_dtype(array.dtype)

    def __len__(self):
        return len(self.array) if self.rows is None else len(self.rows)

    def _gather(self, indices):
        indices = np.asarray(indices)
        return self.array[indices if self.rows is None else self.rows[indices]]

    def read(self, dataset):
        shape = [None] + list(self.image_shape)

        def gather(batch):
            images = tf.numpy_function(self._gather, [batch["index"]], self.dtype, stateful=False)
            images.set_shape(shape)
            return {**batch, "image": images}

        return (
            dataset.batch(READ_BATCH)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .unbatch()
            .map(_drop_index)
        )

    def take(self, count):
        if count is None or count >= len(self):
            return self
        if self.rows is None:
            return ArraySource(self.array[:count])
        return ArraySource(self.array, rows=self.rows[:count])

    def to_array(self, verbose=0):
        if self.rows is None:
            return np.asarray(self.array)
        out = np.empty(self.shape, self.array.dtype)
        for start in range(0, len(self), 4096):  # no fancy-index copy of the whole memmap
            out[start : start + 4096] = self.array[self.rows[start : start + 4096]]
        return out


def _drop_index(element):
    return {key: value for key, value in element.items() if key != "index"}


# --- photos --------------------------------------------------------------------


def decode_photo(contents):
    """Encoded JPEG/PNG/GIF/BMP bytes to a uint8 `[h, w, 3]` tensor."""
    return tf.cond(
        tf.io.is_jpeg(contents),
        # The accurate integer DCT, which libjpeg (and so Pillow) uses by default.
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )


def square_photo(image, image_size, crop):
    """A uint8 photo `[h, w, 3]` to a uint8 `[S, S, 3]` image (the crops of
    `dmfa_tf.data.photos`: `"paper"` or `"aspect"`), rounded to 8 bits."""
    size = int(image_size)
    if crop == "paper":
        resized = round(PAPER_RESIZE_RATIO * size)
        offset = int(round((resized - size) / 2.0))
        image = tf.image.resize(image, [resized, resized], method="bilinear", antialias=True)
        image = image[offset : offset + size, offset : offset + size, :]
    else:  # "aspect": the centre square of the photo, resized
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.minimum(height, width)
        top = (height - side) // 2
        left = (width - side) // 2
        image = image[top : top + side, left : left + side, :]
        image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [size, size, 3])


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _is_image(contents):
    head = tf.strings.substr(contents, 0, 4)
    known = [tf.strings.substr(head, 0, len(signature)) == signature for signature in _SIGNATURES]
    return tf.reduce_any(tf.stack(known))


class PhotoSource(ImageSource):
    """Photo files, read, decoded, cropped and resized to `[S, S, 3]` uint8
    when they are read (in parallel, in order). A file that is not a
    JPEG/PNG/GIF/BMP image stops the pipeline with an error naming it."""

    def __init__(self, paths, image_size, crop="paper"):
        self.paths = [os.fspath(path) for path in paths]
        if not self.paths:
            raise ValueError("A photo source needs at least one file.")
        self.image_size = int(image_size)
        self.crop = crop
        self.image_shape = (self.image_size, self.image_size, 3)
        self.dtype = tf.uint8

    def __len__(self):
        return len(self.paths)

    def decode(self, path):
        """One file to its uint8 `[S, S, 3]` image (a TF graph)."""
        contents = tf.io.read_file(path)
        check = tf.debugging.Assert(
            _is_image(contents),
            ["Cannot decode image file", path, "(not a JPEG/PNG image; remove or replace it)"],
        )
        with tf.control_dependencies([check]):
            return square_photo(decode_photo(contents), self.image_size, self.crop)

    def read(self, dataset):
        table = tf.constant(self.paths)

        def load(element):
            image = self.decode(tf.gather(table, element["index"]))
            return {**_drop_index(element), "image": image}

        return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def take(self, count):
        if count is None or count >= len(self):
            return self
        return PhotoSource(self.paths[:count], self.image_size, self.crop)

    def to_array(self, verbose=0):
        return self.decode_into(np.empty(self.shape, np.uint8), verbose)

    def decode_into(self, out, verbose=0):
        """Decodes every photo into `out` (`[n, S, S, 3]` uint8, e.g. a memmap),
        batch by batch. A file that cannot be decoded is a ValueError naming it."""
        try:
            return write_array(out, self.images(), verbose=verbose)
        except tf.errors.OpError as error:
            raise self.unreadable_error(error) from None

    def unreadable_error(self, error):
        """The ValueError naming the first photo that cannot be decoded (all are
        tried, in parallel), after `error` stopped a pipeline reading them."""
        data = tf.data.Dataset.from_tensor_slices(self.paths).enumerate()
        data = data.map(lambda i, path: (i, self.decode(path)),
                        num_parallel_calls=tf.data.AUTOTUNE)
        data = data.map(lambda i, image: i).ignore_errors()
        readable = np.zeros(len(self.paths), bool)
        for index in data.batch(4096).as_numpy_iterator():
            readable[index] = True
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        if readable.all():
            return ValueError(f"Cannot decode the photos {self.paths[0]} ...: {message}")
        path = self.paths[int(np.argmin(readable))]
        single = message
        try:
            self.decode(tf.constant(path))
        except tf.errors.OpError as failure:
            single = getattr(failure, "message", str(failure)).strip().splitlines()[0]
        return ValueError(
            f"Cannot decode image file {path}: {single} (corrupt or not a JPEG/PNG image; "
            "remove or replace it)."
        )


def write_array(out, images, verbose=0, batch_size=256):
    """Fills `out` (an array or memmap, `[n, ...]`) from a data set of images,
    in batches, with a progress bar for long jobs. Returns `out`."""
    bar = None
    if verbose and len(out) > _PROGRESS_THRESHOLD:
        import keras

        bar = keras.utils.Progbar(len(out), unit_name="image")
    done = 0
    for batch in images.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        out[done : done + len(batch)] = batch
        done += len(batch)
        if bar is not None:
            bar.update(done)
    if done != len(out):
        raise ValueError(f"Expected {len(out):,} images, read {done:,}.")
    return out


def as_source(images):
    """`images` as an `ImageSource`: a source is returned as it is, an array is
    wrapped in an `ArraySource`."""
    if isinstance(images, ImageSource):
        return images
    return ArraySource(images)
