"""The presentation wing: the command line (`python -m c2rope demo | info | diagnose`),
the diagnostics it runs and the pictures it draws. The library core never imports
from here, and only this package imports matplotlib (see plotting.py)."""
