"""The command lines of `retina-pretrain COMMAND`, one module each with `cli_main(argv) -> exit status`.

Each parses its options with jsonargparse from a dataclass whose field docstrings are the help
(shards.commandline), then calls the library function that does the work; nothing here is needed to use
the library from Python.
"""
