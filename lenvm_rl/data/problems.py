"""Math word problems with gold answers (GSM8K and alike) as a conversational training set and held-out prompts."""

from __future__ import annotations

from pathlib import Path

__all__ = ["INSTRUCTION", "WORD_PROBLEMS", "load_math_problems"]

INSTRUCTION = 'Solve the problem step by step. End your reply with a final line "#### <number>" giving the answer.'
"""Appended to every question (after a blank line), so that the rewards can parse the answer."""

WORD_PROBLEMS = "word-problems"
"""The ``dataset`` that names the offline generator :func:`~lenvm_rl.data.generate_word_problems`."""


def load_math_problems(dataset: str, *, eval_prompts: int, train_limit: int | None = None,
                       dataset_config: str | None = None, train_split: str = "train", eval_split: str = "test",
                       question_column: str = "question", answer_column: str = "answer",
                       word_problems_seed: int = 0, instruction: str = INSTRUCTION):
    """The training dataset (``prompt`` messages, ``answer``), the held-out prompts and their gold answers.

    ``dataset`` is a Hub id (with ``dataset_config``), a directory of ``<split>.jsonl`` files, one
    ``.jsonl`` file (its last ``eval_prompts`` rows are held out, training rows come before them), or
    :data:`WORD_PROBLEMS` (the offline generator: ``train_limit`` training problems, then the held-out
    ones, from ``word_problems_seed``). The first ``train_limit`` training rows (all when None) and the
    first ``eval_prompts`` held-out rows are used. Each question becomes one user message with
    ``instruction`` appended after a blank line ('' sends the bare question), so the dataset is
    conversational and TRL, the rollouts and the LenVM all put it through the chat template.
    """
    import datasets

    from lenvm_rl.data.word_problems import word_problem_dataset

    path = Path(dataset)
    if dataset == WORD_PROBLEMS:
        if train_limit is None:
            raise ValueError(f"--dataset {WORD_PROBLEMS} generates its problems: set --train_limit to how many "
                             "training problems to generate")
        rows = word_problem_dataset(train_limit + eval_prompts, seed=word_problems_seed)
        train_range, eval_range = (0, train_limit), (train_limit, eval_prompts)
        train_rows = eval_rows = rows
    elif path.is_file() or path.suffix == ".jsonl":
        rows = _read_jsonl_dataset(path)
        if len(rows) <= eval_prompts:
            raise ValueError(f"--dataset {path} has {len(rows)} rows: none left for training after the "
                             f"{eval_prompts} held-out ones (its last rows); lower --eval_prompts")
        n_train = len(rows) - eval_prompts
        train_range, eval_range = (0, min(n_train, train_limit or n_train)), (n_train, eval_prompts)
        train_rows = eval_rows = rows
    elif path.is_dir():
        train_rows = _read_jsonl_dataset(path / f"{train_split}.jsonl", "--train_split")
        eval_rows = _read_jsonl_dataset(path / f"{eval_split}.jsonl", "--eval_split") if eval_prompts else None
        train_range, eval_range = (0, train_limit), (0, eval_prompts)
    else:
        train_rows = datasets.load_dataset(dataset, dataset_config, split=train_split)
        eval_rows = datasets.load_dataset(dataset, dataset_config, split=eval_split) if eval_prompts else None
        train_range, eval_range = (0, train_limit), (0, eval_prompts)
    columns = dict(question_column=question_column, answer_column=answer_column, instruction=instruction,
                   source=dataset)
    prompts, answers = _prompts_and_answers(train_rows, *train_range, **columns)
    train_dataset = datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})
    if not eval_prompts:
        return train_dataset, [], []
    return train_dataset, *_prompts_and_answers(eval_rows, *eval_range, **columns)


def _read_jsonl_dataset(path: Path, option: str = "--dataset"):
    import datasets

    from lenvm_rl.data.prompts import read_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path} not found (--dataset takes a Hub id, a .jsonl file, a directory "
                                f"of <split>.jsonl files or '{WORD_PROBLEMS}')")
    return datasets.Dataset.from_list([row for _, row in read_jsonl(path)])


def _prompts_and_answers(rows, offset: int, limit: int | None, *, question_column: str, answer_column: str,
                         instruction: str, source: str):
    """Rows ``offset .. offset + limit`` as (chat prompts with the instruction, gold answers).

    A question string becomes one user message (:func:`~lenvm_rl.data.to_messages`).
    """
    from lenvm_rl.data.prompts import append_to_prompt, load_prompts, to_messages

    if answer_column not in rows.column_names:
        raise ValueError(f"--dataset {source} has no column {answer_column!r} (columns: {rows.column_names}); "
                         "set --answer_column")
    prompts = [to_messages(p) for p in load_prompts(rows, prompt_column=question_column, limit=limit, offset=offset)]
    if instruction:
        prompts = [append_to_prompt(p, instruction) for p in prompts]
    answers = list(rows.select(range(offset, offset + len(prompts)))[answer_column])
    return prompts, answers
