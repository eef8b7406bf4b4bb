"""`python -m dmfa_tf.data {prepare-mnist,prepare,show} ...` (see `dmfa_tf.data.cli`)."""

import sys

from dmfa_tf.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
