"""Tagging image collections from the command line (``sadcl predict``): streamed inputs, output files that an
interrupted job resumes, and ``torchrun`` sharding. Only :mod:`sadcl.cli` imports this package; the Python entry
point for streaming is :func:`sadcl.iter_predict`."""
