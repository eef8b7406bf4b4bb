"""`python -m dmfa_tf.serving`: export a saved model folder (`dmfa_tf.serving.cli`)."""

import sys

from dmfa_tf.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
