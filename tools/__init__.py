"""Scripts for running the campaign's windows on a remote machine with transfer limits (see tools/README.md).

Not part of the ``imae`` library: the library runs budgeted, resumable, staged windows anywhere; these scripts
add what one particular kind of machine needs (a size-limited upload of the checkout, a limited number and size
of returned files, datasets sent as compressed archives).
"""
