"""The ``matte`` command line: the top layer, one module per command family (see ``cli.main``)."""
