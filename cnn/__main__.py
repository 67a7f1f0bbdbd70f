"""`python -m cnn`: see `cnn.cli`."""

import sys

from cnn.cli import main

sys.exit(main())
