"""Every ```python block of README.md and docs/**/*.md runs, so the examples cannot rot (docs/contributing.md).

The blocks of one file run top to bottom in one namespace, like a notebook, in the fixture ``doc_example_env``
(tests/docs/conftest.py): ``"smollm2-135m"`` and ``path/to/lenvm`` are tiny random models, nothing reaches the
network. A block directly below a line ``<!-- not-run: <reason> -->`` is left out. A failure names the file and
line (``README.md:76``) and the block's opening fence; the traceback shows the Markdown source lines.
"""

from __future__ import annotations

import linecache
import re
import time
import traceback
import warnings
from dataclasses import dataclass

import pytest

from .conftest import DOC_FILES, DOC_IDS, REPO, split_markdown

PYTHON_LANGS = {"python", "py", "python3"}
NOT_RUN = re.compile(r"<!--\s*not-run\s*:(?P<reason>.*?)-->")
SLOW_SECONDS = 30.0
"""A block that takes more CPU time gets a warning: doc examples should run in seconds on the tiny models. (CPU
time, not wall time, so that a loaded machine does not raise it.)"""


@dataclass(frozen=True)
class Example:
    """One ```python block: ``name`` is ``"<file>:<line of its opening fence>"``; ``not_run`` the marker's reason."""

    name: str
    line: int
    source: str
    not_run: str | None = None


class ExampleFailed(Exception):
    """A doc example raised; the message names the file and line, and carries the traceback."""


def extract_examples(text: str, name: str) -> list[Example]:
    """The ```python blocks of the Markdown ``text`` of the file ``name``, in order, with their not-run reasons.

    A not-run marker must be the line directly above a ```python fence and give a reason; an empty reason, a
    malformed marker (``<!-- not-run -->``) or a marker above anything else is refused, naming ``name`` and the line.
    """
    fences, prose = split_markdown(text, name)
    python = {fence.line: fence for fence in fences if fence.lang in PYTHON_LANGS}
    reasons = {}
    for number, line in prose:
        if not (line.lstrip().startswith("<!--") and "not-run" in line):
            continue
        match = NOT_RUN.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"{name}:{number}: a not-run marker reads `<!-- not-run: <reason> -->`, got {line.strip()!r}")
        if not match["reason"].strip():
            raise ValueError(f"{name}:{number}: the not-run marker gives no reason; say why the block cannot run, "
                             "e.g. `<!-- not-run: needs a GPU -->`")
        if number + 1 not in python:
            raise ValueError(f"{name}:{number}: a not-run marker must be the line directly above a ```python fence")
        reasons[number + 1] = match["reason"].strip()
    return [Example(f"{name}:{line}", line, fence.source, reasons.get(line)) for line, fence in python.items()]


def run_example(example: Example, text: str, namespace: dict) -> float:
    """Run ``example`` (a block of the Markdown ``text``) in ``namespace``; return its seconds.

    Its code keeps the file's line numbers under the file name ``example.name``, and ``linecache`` knows the
    file's lines, so a traceback shows the Markdown source. Raises :class:`ExampleFailed` naming ``<file>:<line>``.
    """
    filename = example.name
    lines = text.splitlines(keepends=True)
    linecache.cache[filename] = (len(text), None, lines, filename)
    start = time.perf_counter()
    try:
        code = compile("\n" * example.line + example.source, filename, "exec", dont_inherit=True)
        exec(code, namespace)
    except (Exception, SystemExit) as err:
        raise ExampleFailed(_describe(err, example)) from None
    return time.perf_counter() - start


def _describe(err: BaseException, example: Example) -> str:
    """``<file>:<line>: <error>`` (the innermost line of the file in the traceback), the block that ran, and the
    traceback from the block's frame on."""
    file = example.name.rsplit(":", 1)[0]
    if isinstance(err, SyntaxError) and err.filename == example.name:
        line = err.lineno
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename.rsplit(":", 1)[0] == file]
        line = frames[-1].lineno if frames else example.line
    tb = err.__traceback__.tb_next if err.__traceback__ is not None else None  # from the block's frame on
    detail = "".join(traceback.format_exception(type(err), err, tb))
    return (f"{file}:{line}: {type(err).__name__}: {err}\n"
            f"in the python block opening at {example.name} (the blocks of a file share one namespace, top to "
            "bottom; a block that cannot run takes `<!-- not-run: <reason> -->` on the line above its fence)\n\n"
            f"{detail}")


def run_file(text: str, name: str, namespace: dict | None = None) -> list[tuple[str, float]]:
    """Run the runnable blocks of the Markdown ``text`` of ``name`` in one namespace; ``(block name, wall seconds)``."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    timings = []
    for example in extract_examples(text, name):
        if example.not_run is None:
            cpu = time.process_time()
            timings.append((example.name, run_example(example, text, namespace)))
            cpu = time.process_time() - cpu
            if cpu > SLOW_SECONDS:
                warnings.warn(f"{example.name} took {cpu:.0f} s of CPU time: doc examples should run in seconds on "
                              "the tiny models (docs/contributing.md)", stacklevel=2)
    return timings


@pytest.mark.parametrize("path", DOC_FILES, ids=DOC_IDS)
def test_the_python_blocks_of_the_docs_run(path, request):
    name = path.relative_to(REPO).as_posix()
    text = path.read_text(encoding="utf-8")
    if all(example.not_run for example in extract_examples(text, name)):
        return  # nothing to run: no need to build the models
    request.getfixturevalue("doc_example_env")
    try:
        timings, failure = run_file(text, name), None
    except ExampleFailed as err:
        timings, failure = [], str(err)
    if failure is not None:  # outside the except clause: no "during handling" chain in the report
        pytest.fail(failure, pytrace=False)
    for block, seconds in timings:
        print(f"{block}: {seconds:.1f} s")


# ---------------------------------------------------------------------------------------------- the harness itself
DOC = """\
# A doc

```python
x = 6
```

Some prose, a `<!-- not-run: in a code span -->` and a shell command:

```bash
python -c "raise SystemExit(1)"
```

<!-- not-run: needs a GPU -->
```python
import torch
torch.ones(1, device="cuda")
```

1. In a list:

   ```python
   if x:
       y = x * 7
   ```

````markdown
```python
this is Markdown source, not Python
```
````

~~~py
assert y == 42
~~~
"""


def test_the_extractor_finds_python_blocks_with_their_lines_and_not_run_reasons():
    examples = extract_examples(DOC, "doc.md")
    assert [(e.name, e.not_run) for e in examples] == [
        ("doc.md:3", None), ("doc.md:14", "needs a GPU"), ("doc.md:21", None), ("doc.md:32", None)]
    assert examples[0].source == "x = 6\n"
    assert examples[1].source == 'import torch\ntorch.ones(1, device="cuda")\n'
    assert examples[2].source == "if x:\n    y = x * 7\n"  # the list item's indentation removed
    assert DOC.splitlines()[examples[3].line - 1] == "~~~py"


def test_the_blocks_share_one_namespace_and_not_run_blocks_are_left_out():
    namespace = {}
    timings = run_file(DOC, "doc.md", namespace)
    assert [name for name, _ in timings] == ["doc.md:3", "doc.md:21", "doc.md:32"]  # not the CUDA block
    assert (namespace["x"], namespace["y"]) == (6, 42)


@pytest.mark.parametrize("marker, error", [
    ("<!-- not-run: -->", "doc.md:2: the not-run marker gives no reason"),
    ("<!-- not-run:    -->", "doc.md:2: the not-run marker gives no reason"),
    ("<!-- not-run -->", "doc.md:2: a not-run marker reads"),
    ("<!--not-run because-->", "doc.md:2: a not-run marker reads"),
])
def test_a_not_run_marker_without_a_reason_is_refused(marker, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        extract_examples(f"text\n{marker}\n```python\nx = 1\n```\n", "doc.md")


@pytest.mark.parametrize("text", [
    "<!-- not-run: too slow -->\n\n```python\nx = 1\n```\n",      # a blank line between: the block would run
    "<!-- not-run: too slow -->\n```bash\nls\n```\n",                # only python blocks run
    "<!-- not-run: too slow -->\nprose\n",
])
def test_a_not_run_marker_must_sit_directly_above_a_python_fence(text):
    with pytest.raises(ValueError, match=re.escape("doc.md:1: a not-run marker must be the line directly above")):
        extract_examples(text, "doc.md")


def test_an_unclosed_fence_is_refused():
    with pytest.raises(ValueError, match=re.escape("doc.md:3: the code fence ``` is never closed")):
        extract_examples("# T\n\n```python\nx = 1\n``\n", "doc.md")


def test_a_failing_block_fails_naming_the_file_and_line():
    text = "# T\n\n```python\ndef half(n):\n    return n / 0\n```\n\nprose\n\n```python\nok = 1\nhalf(3)\n```\n"
    with pytest.raises(ExampleFailed) as failure:
        run_file(text, "docs/t.md")
    message = str(failure.value)
    assert message.startswith("docs/t.md:5: ZeroDivisionError: division by zero\n")
    assert "in the python block opening at docs/t.md:10" in message  # the block that called half()
    assert 'File "docs/t.md:10", line 12' in message and "half(3)" in message  # the Markdown lines in the traceback
    assert 'File "docs/t.md:3", line 5' in message and "return n / 0" in message


def test_a_syntax_error_names_its_line():
    with pytest.raises(ExampleFailed, match=re.escape("doc.md:5: SyntaxError")):
        run_file("# T\n\n```python\nx = 1\nx = = 2\n```\n", "doc.md")


def test_a_failing_block_fails_the_doc_test(tmp_path, monkeypatch):
    """The parametrised test itself fails (not errors, not passes) on a doc whose block raises."""
    doc = tmp_path / "README.md"
    doc.write_text("# T\n\n```python\nassert 1 + 1 == 3, 'arithmetic'\n```\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=re.escape("README.md:4: AssertionError: arithmetic")):
        test_the_python_blocks_of_the_docs_run(doc, _NoFixtures())


class _NoFixtures:
    """A ``request`` for a doc that needs no models."""

    def getfixturevalue(self, name):
        return None


def test_the_fixture_gives_what_docs_contributing_promises(doc_example_env, smollm2_tokenizer):
    import json
    import os
    import socket
    from pathlib import Path

    import huggingface_hub.constants
    from transformers import AutoConfig, AutoTokenizer

    from lenvm_rl import LenVM
    from lenvm_rl.data import chat_template_hash
    from lenvm_rl.modeling.embedded import cache_dir, resolve_model_path

    assert Path.cwd() == doc_example_env and cache_dir() == Path(os.environ["LENVM_RL_HOME"])
    backbone = resolve_model_path("smollm2-135m")
    assert backbone == str(cache_dir() / "smollm2-135m")  # found, not converted from the GGUF
    config = AutoConfig.from_pretrained(backbone)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 32, 2)
    assert (config.vocab_size, config.eos_token_id) == (len(smollm2_tokenizer), smollm2_tokenizer.eos_token_id)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    assert tokenizer.get_vocab() == smollm2_tokenizer.get_vocab()
    assert tokenizer.chat_template == smollm2_tokenizer.chat_template
    lenvm = LenVM.from_pretrained("path/to/lenvm")
    assert (lenvm.gamma, lenvm.prompt_format) == (0.99, "chat")
    assert lenvm.chat_template_hash == chat_template_hash(smollm2_tokenizer)
    assert json.loads(Path("path/to/lenvm/config.json").read_text())["architectures"] == ["LlamaForLengthValueModel"]
    assert huggingface_hub.constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    with socket.socket() as sock, pytest.raises(OSError, match="the doc examples run offline"):
        sock.connect(("huggingface.co", 443))
