"""Entry points shared by the ``lenvm-rl`` command and the ``recipes/`` scripts."""
