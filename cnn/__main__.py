"""`python -m cnn`: see `cnn.cli.main`."""

from cnn.cli.main import leave, main

leave(main())
