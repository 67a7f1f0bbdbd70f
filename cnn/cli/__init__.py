"""The command line, `python -m cnn COMMAND`: parsing only, one module per group of commands; the logic is
in the library. `main` assembles the parser and turns known failures into exit codes (`cnn.errors`).

May import: anything of `cnn`; building the parser imports only `cnn.config`, `cnn.errors` and the names
modules, so `python -m cnn --help` starts without JAX."""
