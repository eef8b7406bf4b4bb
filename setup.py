"""dmfa_tf: Deep Mixture of Factor Analyzers in TensorFlow, Keras 3 and TFP."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="dmfa_tf",
    version="0.1.0",
    description=(
        "Deep Mixture of Factor Analyzers: the conditional density of missing "
        "pixels, in TensorFlow / Keras 3 / TensorFlow Probability."
    ),
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["dmfa_tf", "dmfa_tf.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow>=2.18,<2.22",
        # TFP 0.25 is the release that works with Keras 3 beside tf-keras.
        "tensorflow-probability>=0.25,<0.26",
        # TFP refuses to import without tf-keras, even for tfp.distributions.
        "tf-keras>=2.18,<2.22",
        "keras>=3.8,<4",
        "tensorflow-datasets>=4.9,<5",
        # TFDS needs it (and Pillow) to prepare a data set, e.g. mnist offline:
        # `python -m dmfa_tf.data prepare-mnist`.
        "importlib-resources>=5,<8",
        "tensorboard>=2.18,<2.22",
        "numpy>=1.26,<3",
        "scikit-learn>=1.3,<2",
        # The baselines' linear algebra and the calibration's chi-squared
        # percentiles (scikit-learn needs it too).
        "scipy>=1.10,<2",
        "matplotlib>=3.7,<4",
        "Pillow>=10,<14",
    ],
    extras_require={
        "test": ["pytest>=7,<10"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
