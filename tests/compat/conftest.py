"""tests/compat: the 0.2.x-style scripts in scripts/ are run by the tests, never imported by
pytest's collection (they set torch's default dtype at import, as a script may)."""

collect_ignore = ["scripts"]
