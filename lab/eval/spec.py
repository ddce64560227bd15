"""Benchmark specs: every `evals/*.yaml` (LAB_EVALS_DIR overrides the folder) is a benchmark, read into a
`Spec`. A spec is all there is to a benchmark: where its rows are (a local folder's layout and the Hub's),
their columns, splits, subject names and categories, subsets, prompt templates and generation settings;
its `kind` (`choice` or `code`, lab/eval/kinds/) says how it is planned and scored, and checks the rest
(`kinds.kind_of`).

    from lab.eval.spec import benchmarks, load_spec
    benchmarks()                    # the names of whatever evals/ holds
    spec = load_spec("mmlu")
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lab import config
from lab.errors import LabError

KINDS = ("choice", "code")


@dataclass
class Subset:
    name: str
    description: str = ""
    per_subject: int | None = None  # questions drawn from each subject (seeded)
    subjects: list[str] | None = None
    categories: list[str] | None = None
    limit: int | None = None  # items drawn from the whole benchmark (seeded)
    tasks: tuple[int, int] | None = None  # code: first and last task number


@dataclass
class Source:
    """Where rows come from: a file pattern under the data folder, or a Hub dataset (`path`, `config`).
    `columns` maps question, options and answer to column names (a header row) or positions (none);
    `options` may name one column that holds a list. `splits` renames the spec's splits for this source."""

    file: str | None = None  # local: "mmlu/{split}/{subject}_{split}.csv"
    path: str | None = None  # hub: "cais/mmlu"
    config: str | None = None  # hub: "{subject}"
    splits: dict[str, str] = field(default_factory=dict)
    columns: dict = field(default_factory=dict)

    def split_name(self, split: str) -> str:
        return self.splits.get(split, split)


@dataclass
class Mapping:
    """A file that maps each subject to its name and categories: an entry's `name` and `categories` are keys
    (or positions, for a list entry). `local` is under the data folder, `hub` in the Hub dataset's repository
    (None: the Hub has none)."""

    local: str
    hub: str | None = None
    name: str | int = "name"
    categories: str | int = "categories"


@dataclass
class Spec:
    name: str
    title: str
    kind: str
    lang: str
    split: str
    local: Source
    hub: Source
    fewshot_split: str | None = None
    default_shots: int = 0
    default_mode: str | None = None  # None: the kind's first mode
    choices: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])
    mapping: Mapping | None = None
    categories: dict[str, list[str]] = field(default_factory=dict)  # category -> subjects, when no mapping file
    category_order: list[str] = field(default_factory=list)  # how reports list the categories
    extra_groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. C-Eval Hard
    subsets: dict[str, Subset] = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)  # the templates the kind renders (see its module)
    # named prompt templates: name -> {description, and the `prompts` keys it replaces}; a run picks one by name
    templates: dict[str, dict] = field(default_factory=dict)
    generation: dict = field(default_factory=dict)  # max_new_tokens, timeout_s, stops
    task_prefix: str = ""  # code: task ids are prefix + number ("HumanEval/7")
    package: dict | None = None  # code: {name, file}: a Python package that ships the data, the last resort
    order: int = 100  # where lists of benchmarks put it (then by name)
    path: Path | None = None

    def subset(self, name: str) -> Subset:
        if name not in self.subsets:
            known = ", ".join(self.subsets) or "none"
            raise LabError(f"{self.name} has no subset '{name}'; its subsets are: {known}.")
        return self.subsets[name]

    def prompts_for(self, template: str | None = None) -> dict:
        """The prompt templates a run renders: `prompts`, with the named template's keys put over them
        (None and "default" are `prompts` itself)."""
        if template in (None, "default"):
            return self.prompts
        if template not in self.templates:
            known = ", ".join(["default", *self.templates])
            raise LabError(f"{self.name} has no prompt template '{template}'; its templates are: {known}.")
        return {**self.prompts, **{k: v for k, v in self.templates[template].items() if k != "description"}}

    def category_of(self, subject: str) -> list[str]:
        """The inline categories holding `subject` (specs without a mapping file)."""
        return [cat for cat, subjects in self.categories.items() if subject in subjects]


def benchmarks() -> list[str]:
    """Every benchmark evals/ holds, by name, in the order the specs ask for (`order`, then name)."""
    def order(path: Path) -> tuple[int, str]:
        try:
            value = config.read_yaml(path, "The benchmark spec").get("order", 100)
        except LabError:  # a broken spec is listed last; loading it says what is wrong
            value = 100
        return (value if isinstance(value, int) else 100, path.stem)

    return [p.stem for p in sorted(config.evals_dir().glob("*.yaml"), key=order)]


def load_spec(name: str) -> Spec:
    path = config.evals_dir() / f"{name}.yaml"
    if path not in config.evals_dir().glob("*.yaml"):  # a name, not a path that leads out of evals/
        names = benchmarks()  # parses every spec for its order: only to say which there are
        raise LabError(f"Unknown benchmark '{name}'; choose one of {', '.join(names) or 'none (evals/ is empty)'}.")
    raw = config.read_yaml(path, "The benchmark spec", missing="run from a checkout or set LAB_EVALS_DIR")
    where = f"The benchmark spec {path}"
    try:
        raw = dict(raw)
        data = raw.pop("data", None) or {}
        subsets = {}
        for key, s in (raw.pop("subsets", None) or {}).items():
            s = dict(s)
            if "tasks" in s:
                s["tasks"] = tuple(s["tasks"])
            subsets[key] = Subset(name=key, **s)
        mapping = raw.pop("mapping", None)
        spec = Spec(**raw, local=Source(**(data.get("local") or {})), hub=Source(**(data.get("hub") or {})),
                    mapping=Mapping(**mapping) if mapping else None, subsets=subsets, path=path)
    except TypeError as e:
        known = ", ".join(f.name for f in fields(Spec) if f.name not in ("path", "local", "hub")) + ", data"
        raise LabError(f"{where} has a field the runner does not know or lacks one it needs ({e}); "
                       f"its fields are {known}.") from None
    if spec.name != name:
        raise LabError(f"{where} names itself '{spec.name}'; a spec's name must be its file's name, '{name}'.")
    if spec.kind not in KINDS:
        raise LabError(f"{where} has kind '{spec.kind}'; the kinds are {', '.join(KINDS)}.")
    templates = spec.templates if isinstance(spec.templates, dict) else {"templates": None}
    bad = [k for k, t in templates.items() if not isinstance(t, dict) or k == "default"]
    if bad:
        raise LabError(f"{where} has a malformed 'templates' entry ({', '.join(map(str, bad)) or 'templates'}): each "
                       "names a mapping of the prompt keys it replaces, and 'default' is the name of 'prompts'.")
    if not spec.local.file and not spec.hub.path:
        raise LabError(f"{where} names neither a local file pattern (data.local.file) nor a Hub dataset "
                       "(data.hub.path).")
    return spec
