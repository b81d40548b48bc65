"""Numbered schema upgrades; see README.md in this folder and docs/database.md."""
