"""`python -m cnn`: see `cnn.cli.main`."""

import sys

from cnn.cli.main import main

sys.exit(main())
