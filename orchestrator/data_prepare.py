"""The a100 profile's data: DAPO-Math-17k for training, six benchmarks for validation, as verl parquet files.

``maspo data prepare [--out DIR] [--only NAME,...]`` loads each source from the Hugging Face Hub with
``datasets.load_dataset`` at the revision pinned in :data:`SOURCES` (needs hub access), converts it and writes
``train.parquet`` and ``val_<name>.parquet`` into DIR, plus ``sources.json`` (ids, revisions, row counts).
The rows have the schema the local profile's synthetic data has (``orchestrator/local/tasks.py``):

    data_source   one name per benchmark (aime24, aime25, amc23, math500, minerva, olympiad; dapo_math_17k)
    prompt        [{"role": "user", "content": "<problem>\\n<boxed-answer instruction>"}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": "<answer>"}
    extra_info    {"split": "train" | "test", "index": int, "question": str, "source_id": str}

``extra_info.split`` picks the grader in ``orchestrator/rewards.py`` (math_verify for training, prime_math for
validation), and every file has the same ``extra_info`` struct because verl concatenates the validation files.
The converters take an iterable of rows (dicts with the hub's column layout), so tests feed them fixtures.

``maspo data prepare --fixtures --out DIR`` writes the same layout from the fixtures shipped with maspo (a few
rows per source, ``tests/fixtures/data``, in the wheel too), without network: the data of a rehearsal
(``maspo compare --profile a100 --rehearse``, ``orchestrator/rehearsal.py``).

Every prompt (training and validation) ends with DeepSeek-R1's recommended math instruction, "Please reason
step by step, and put your final answer within \\boxed{}.": the reward reads the last ``\\boxed{}``. DAPO's own
prompt asks for an "Answer:" line instead, so its wrapper is removed and the problem re-wrapped. The hub copy
of DAPO-Math-17k repeats each of its ~17.4k problems about 100 times: rows are deduplicated on the problem text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

from orchestrator.errors import UserError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TRAIN_NAME = "dapo_math_17k"
VALIDATION_NAMES = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")  # the paper's table order
DEFAULT_OUT = "~/maspo-data"
MANIFEST = "sources.json"

# DAPO-Math-17k's prompt wrapper (asks for an "Answer:" line; we ask for \boxed{} instead)
_DAPO_HEAD = "is the answer to the problem.\n\n"
_DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


class DataPrepareError(UserError):
    """A data source that cannot be loaded or converted; the message is one line meant for the user."""


def train_file(root: str | Path) -> Path:
    return Path(root) / "train.parquet"


def val_files(root: str | Path) -> list[Path]:
    return [Path(root) / f"val_{name}.parquet" for name in VALIDATION_NAMES]


def output_file(name: str, root: str | Path) -> Path:
    return train_file(root) if name == TRAIN_NAME else Path(root) / f"val_{name}.parquet"


# --- rows ------------------------------------------------------------------------------------------------


def verl_row(problem: str, answer: str, data_source: str, split: str, index: int, source_id: Any) -> dict:
    """One row in the schema verl's RLHFDataset reads (the same as ``orchestrator.local.tasks.verl_row``)."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": f"{problem}\n{INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index, "question": problem, "source_id": str(source_id)},
    }


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` of ``text`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin + 1:i].strip()
    return None


def clean_answer(value: Any) -> str:
    """A ground truth as a plain string: lists joined, 27.0 -> "27", one ``$...$`` or ``\\boxed{}`` unwrapped."""
    if isinstance(value, (list, tuple)):
        return ", ".join(clean_answer(v) for v in value if clean_answer(v))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip() if value is not None else ""
    if len(text) > 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    boxed = last_boxed(text) if text.startswith("\\boxed{") and text.endswith("}") else None
    return boxed if boxed is not None else text


def _columns(row: Mapping[str, Any], source: str, index: int, *names: str) -> list[Any]:
    missing = [n for n in names if n not in row]
    if missing:
        raise DataPrepareError(f"{source} row {index} has no column {', '.join(missing)} (columns: "
                               f"{', '.join(map(str, row))}); the hub layout changed, check SOURCES")
    return [row[n] for n in names]


def _converted(rows: Iterable[Mapping[str, Any]], name: str, split: str,
               read: Callable[[Mapping[str, Any], int], tuple[str, Any, Any]]) -> list[dict]:
    """Rows through ``read(row, i) -> (problem, answer, source id)``; empty problems or answers are skipped."""
    out = []
    for i, row in enumerate(rows):
        problem, answer, source_id = read(row, i)
        problem, answer = str(problem or "").strip(), clean_answer(answer)
        if problem and answer:
            out.append(verl_row(problem, answer, name, split, len(out), source_id))
    return out


def dapo_problem(content: str) -> str:
    """The bare problem inside DAPO-Math-17k's prompt wrapper (the text itself when the wrapper is absent)."""
    if _DAPO_HEAD in content:
        content = content.split(_DAPO_HEAD, 1)[1]
    if content.endswith(_DAPO_TAIL):
        content = content[: -len(_DAPO_TAIL)]
    return content.strip()


def convert_dapo_math_17k(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """BytedTsinghua-SIA/DAPO-Math-17k: prompt (chat list), reward_model.ground_truth, extra_info.index."""
    out, seen = [], set()
    for i, row in enumerate(rows):
        prompt, reward_model, extra = _columns(row, TRAIN_NAME, i, "prompt", "reward_model", "extra_info")
        problem = dapo_problem(prompt[0]["content"]) if prompt else ""
        answer = clean_answer((reward_model or {}).get("ground_truth"))
        if problem and answer and problem not in seen:
            seen.add(problem)
            out.append(verl_row(problem, answer, TRAIN_NAME, "train", len(out), (extra or {}).get("index", i)))
    return out


def convert_aime24(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """math-ai/aime24: problem, solution (the answer inside ``\\boxed{}``), id."""
    def read(row, i):
        problem, solution = _columns(row, "aime24", i, "problem", "solution")
        return problem, last_boxed(str(solution)) or "", row.get("id", i)
    return _converted(rows, "aime24", "test", read)


def convert_aime25(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """math-ai/aime25: problem, answer, id."""
    def read(row, i):
        problem, answer = _columns(row, "aime25", i, "problem", "answer")
        return problem, answer, row.get("id", i)
    return _converted(rows, "aime25", "test", read)


def convert_amc23(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """math-ai/amc23: question, answer (a float such as 27.0), id."""
    def read(row, i):
        question, answer = _columns(row, "amc23", i, "question", "answer")
        return question, answer, row.get("id", i)
    return _converted(rows, "amc23", "test", read)


def convert_math500(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """HuggingFaceH4/MATH-500: problem, answer, unique_id."""
    def read(row, i):
        problem, answer = _columns(row, "math500", i, "problem", "answer")
        return problem, answer, row.get("unique_id", i)
    return _converted(rows, "math500", "test", read)


def convert_minerva(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """math-ai/minervamath: question, answer."""
    def read(row, i):
        question, answer = _columns(row, "minerva", i, "question", "answer")
        return question, answer, row.get("id", i)
    return _converted(rows, "minerva", "test", read)


def convert_olympiad(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """math-ai/olympiadbench: question, final_answer (a list of ``$...$`` strings), context, id."""
    def read(row, i):
        question, final_answer = _columns(row, "olympiad", i, "question", "final_answer")
        context = str(row.get("context") or "").strip()
        return (f"{context}\n\n{question}" if context else question), final_answer, row.get("id", i)
    return _converted(rows, "olympiad", "test", read)


# --- sources ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str  # data_source of its rows and the stem of its file
    title: str
    hf_id: str
    revision: str  # a commit of the hub repository; "main" where no commit could be pinned
    split: str
    role: Literal["train", "validation"]
    columns: tuple[str, ...]  # the columns the converter reads (others are not loaded when possible)
    convert: Callable[[Iterable[Mapping[str, Any]]], list[dict]]


# Revisions: commits seen in public code that pins them (DAPO, MATH-500, AIME 2024, AIME 2025). For AMC 2023,
# Minerva and OlympiadBench no full commit hash could be confirmed offline: "main" until someone records the
# commit `maspo data prepare` printed (it writes the resolved revision into sources.json).
SOURCES: dict[str, Source] = {s.name: s for s in [
    Source(TRAIN_NAME, "DAPO-Math-17k", "BytedTsinghua-SIA/DAPO-Math-17k",
           "65877096c24ffa7abc4e4fa5edb95cf3413a5674", "train", "train",
           ("prompt", "reward_model", "extra_info"), convert_dapo_math_17k),
    Source("aime24", "AIME 2024", "math-ai/aime24", "83a7f387baaa524a8bda0022eac0541582297103", "test",
           "validation", ("id", "problem", "solution"), convert_aime24),
    Source("aime25", "AIME 2025", "math-ai/aime25", "563bb8404243c5f09de6ec262f2db674fe5bce9b", "test",
           "validation", ("id", "problem", "answer"), convert_aime25),
    Source("amc23", "AMC 2023", "math-ai/amc23", "main", "test", "validation",
           ("id", "question", "answer"), convert_amc23),
    Source("math500", "MATH-500", "HuggingFaceH4/MATH-500", "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be", "test",
           "validation", ("unique_id", "problem", "answer"), convert_math500),
    Source("minerva", "Minerva Math", "math-ai/minervamath", "main", "test", "validation",
           ("question", "answer"), convert_minerva),
    Source("olympiad", "OlympiadBench", "math-ai/olympiadbench", "main", "test", "validation",
           ("id", "question", "final_answer", "context"), convert_olympiad),
]}


def select_sources(only: str | Iterable[str] | None = None) -> list[Source]:
    """``None`` -> every source; ``"aime24,amc23"`` or a list -> those, checked."""
    if only is None:
        return list(SOURCES.values())
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise DataPrepareError(f"unknown data source(s) {', '.join(unknown) or '(none given)'}; "
                               f"valid: {', '.join(SOURCES)}")
    return [SOURCES[n] for n in dict.fromkeys(names)]


def load_rows(source: Source) -> tuple[Iterator[Mapping[str, Any]], int, str]:
    """(rows, row count, resolved revision) of a source from the Hugging Face Hub (needs network)."""
    try:
        import datasets
    except ImportError:
        raise DataPrepareError("the `datasets` package is not installed (verl normally brings it): "
                               "pip install datasets") from None
    try:
        ds = datasets.load_dataset(source.hf_id, split=source.split, revision=source.revision)
    except Exception as e:  # noqa: BLE001 - network, auth, missing revision: all end the command the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataPrepareError(f"cannot load {source.hf_id}@{source.revision} split {source.split}: {first}") from None
    keep = [c for c in source.columns if c in ds.column_names]
    if keep and len(keep) < len(ds.column_names):
        ds = ds.select_columns(keep)
    return iter(ds), len(ds), resolve_revision(source)


def resolve_revision(source: Source) -> str:
    """The commit ``source.revision`` names on the hub (a branch such as "main" resolves to its commit)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.hf_id, revision=source.revision).sha or source.revision
    except Exception:  # noqa: BLE001 - offline or an old hub client: keep what SOURCES says
        return source.revision


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    if not rows:
        raise DataPrepareError(f"no usable rows for {path.name}: every row lacked a problem or an answer")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pd.DataFrame(rows).to_parquet(tmp)
    tmp.replace(path)
    return path


def update_manifest(out_dir: Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` (name -> id, revision, split, rows, file) into ``<out_dir>/sources.json``."""
    path = out_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(entries)
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return path


def prepare_source(source: Source, out_dir: str | Path, rows: Iterable[Mapping[str, Any]] | None = None,
                   revision: str | None = None, on_row: Callable[[int], None] | None = None) -> dict:
    """Convert one source (loaded from the hub unless ``rows`` is given) and write its parquet file.

    Returns its manifest entry; ``revision`` is what it records (default: the pinned one, or the commit the
    hub resolved it to when loading here). ``on_row(i)`` is called as rows are read (progress display).
    """
    out_dir = Path(out_dir).expanduser()
    if rows is None:
        rows, _, revision = load_rows(source)
    revision = revision or source.revision
    if on_row is not None:
        rows = _counting(rows, on_row)
    converted = source.convert(rows)
    path = write_parquet(converted, output_file(source.name, out_dir))
    return {"hf_id": source.hf_id, "revision": revision, "split": source.split, "role": source.role,
            "rows": len(converted), "file": path.name}


FIXTURE_REVISION = "fixtures"  # what sources.json records for data written from the shipped fixtures


def fixture_rows(source: Source) -> list[dict]:
    """The shipped fixture rows of a source (the hub's column layout; ``orchestrator.resources``)."""
    from orchestrator import resources

    path = resources.fixture_file(source.name)
    if not path.is_file():
        raise DataPrepareError(f"no fixture for {source.name} ({path}): this maspo install lacks its data fixtures")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_fixtures(out_dir: str | Path, only: str | Iterable[str] | None = None) -> dict[str, dict]:
    """Write the a100 data layout from the shipped fixtures (no network); returns the manifest entries."""
    out_dir = Path(out_dir).expanduser()
    entries = {s.name: prepare_source(s, out_dir, rows=fixture_rows(s), revision=FIXTURE_REVISION)
               for s in select_sources(only)}
    update_manifest(out_dir, entries)
    return entries


def _counting(rows: Iterable[Mapping[str, Any]], on_row: Callable[[int], None]) -> Iterator[Mapping[str, Any]]:
    for i, row in enumerate(rows):
        if i % 1000 == 0:
            on_row(i)
        yield row


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file (the test fixtures, or a hub file downloaded by hand)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sources_table() -> list[tuple[str, str, str, str, str]]:
    """(name, title, hub id, revision, split) per source, for the CLI and the README."""
    return [(s.name, s.title, s.hf_id, s.revision, s.split) for s in SOURCES.values()]

