"""The ``lenvm-rl`` commands, one module each: a dataclass of arguments with ``help`` metadata, parsed by
``TrlParser`` (underscore flags, ``--config`` YAML), and ``main(argv) -> exit status``.

Every module has ``NAME``, ``HELP`` (its line in ``lenvm-rl --help``), ``make_parser(prog)`` (the command's own
dataclass first in ``parser.dataclass_types``) and ``main(argv)``, most from :func:`~lenvm_rl.commands.base.command`.
``lenvm_rl.cli`` dispatches on the name.
"""

import importlib
from types import ModuleType

from lenvm_rl.commands.base import CLIError, resolve_device

__all__ = ["COMMANDS", "CLIError", "command_module", "resolve_device"]

COMMANDS = ("predict", "trace", "rollout", "pretrain", "evaluate", "generate", "analyze", "demo", "serve", "grpo",
            "ppo")


def command_module(name: str) -> ModuleType:
    """The module of the command ``name`` (one of :data:`COMMANDS`)."""
    return importlib.import_module(f"lenvm_rl.commands.{name}")
