"""What both planes share, torch-free: the config schema and its validation, identity and digests,
every exception class, the store's files, stage records, start records (what a stage computes
from, readable without running it) and the progress protocol.

`sslprune.control` (plan, submit, status, report) and `sslprune.compute` (networks, the loop)
import this package and never each other (tests/test_planes.py)."""
