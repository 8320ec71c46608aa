"""The chaos run (``make chaos``, ``python -m chaos.run``): docs/chaos.md."""
