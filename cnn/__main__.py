"""`python -m cnn`: see `cnn.cli.main`."""

from cnn.cli.main import end_process, main

end_process(main())
