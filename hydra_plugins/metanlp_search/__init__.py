"""Hydra's plugin package for `hydra/sweeper=metanlp_study` (the logic is in metanlp_cli.search)."""
