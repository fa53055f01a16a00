"""Typed all the way (issue 21, deliverable 3), checked with ast over medscale/ and launcher/ as the other two code
rules are (tests/test_architecture.py: no module over 500 lines; tests/test_settings.py: no MEDSCALE_* read outside
settings.py):
- a function, public or private, takes at most five positional parameters (more are keyword-only, after `*`, or a
  spec object; a Triton kernel and an autograd Function's forward are called positionally by their frameworks);
- statuses are medscale.status enums everywhere: no bare status string is compared or assigned, "preempted" is one
  value (the stop flag, the exit codes and the SLURM launcher's codes all read it), and job records and registry rows
  written before still load, their kind and statuses as the enums;
- lists of overrides and table rows are read by name, never at a fixed position.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import yaml

from conftest import REPO, cli
from medscale.jobkind import JobKind
from medscale.status import AttemptStatus, JobStatus
from medscale.verdicts import ResultRole

MAX_POSITIONAL = 5


def _positional_by_contract(node: ast.FunctionDef, cls: ast.ClassDef | None) -> bool:
    """A Triton kernel (`@triton.jit`) or an autograd Function's forward/backward: Triton's launcher and torch's
    `Function.apply` pass their arguments by position (apply takes no keywords), so they cannot be keyword-only."""
    if any(ast.unparse(d).split("(")[0].endswith("jit") for d in node.decorator_list):
        return True
    return cls is not None and any(ast.unparse(b).endswith("Function") for b in cls.bases)


def _dataclass_positional(node: ast.ClassDef) -> int:
    """The parameters a dataclass's generated __init__ takes by position: its own fields up to a `_: KW_ONLY`
    marker (none with `kw_only=True`), less ClassVars and `field(init=False)`."""
    decorators = [ast.unparse(d) for d in node.decorator_list]
    if not any(d.split("(")[0].split(".")[-1] == "dataclass" for d in decorators) or any(
            "kw_only=True" in d for d in decorators):
        return 0
    n = 0
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = ast.unparse(stmt.annotation)
        if annotation.endswith("KW_ONLY"):
            break
        if "ClassVar" not in annotation and "init=False" not in (ast.unparse(stmt.value) if stmt.value else ""):
            n += 1
    return n


def too_many_positional(source: str, limit: int = MAX_POSITIONAL) -> list[tuple[int, str, int]]:
    """(line, qualified name, positional parameters) of each function or method over `limit`, public or private,
    nested too: a caller lining up six arguments is one swap away from a wrong run, wherever the function lives.
    `self` / `cls` of a method are not counted, `*args` and keyword-only parameters are not positional parameters a
    caller must line up. A dataclass's generated __init__ counts too (as `Name.__init__`)."""
    found = []

    def visit(node: ast.AST, prefix: str, cls: ast.ClassDef | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                if (n := _dataclass_positional(child)) > limit:
                    found.append((child.lineno, f"{prefix}{child.name}.__init__", n))
                visit(child, f"{prefix}{child.name}.", child)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [a.arg for a in child.args.posonlyargs + child.args.args]
                static = any(ast.unparse(d) == "staticmethod" for d in child.decorator_list)
                if cls is not None and not static and params[:1] in (["self"], ["cls"]):
                    params = params[1:]
                if len(params) > limit and not _positional_by_contract(child, cls):
                    found.append((child.lineno, prefix + child.name, len(params)))
                visit(child, f"{prefix}{child.name}.", None)
            else:
                visit(child, prefix, cls)

    visit(ast.parse(source), "", None)
    return found


def _sources() -> list[Path]:
    return sorted(p for root in ("medscale", "launcher") for p in (REPO / root).rglob("*.py"))


def test_no_function_takes_more_than_five_positional_parameters():
    """Issue 21 counted 37 calls passing seven or more arguments by position (run_eval took 17, the eval command 26):
    a caller lining up that many is one swap away from a wrong run that still starts."""
    bad = [f"{p.relative_to(REPO)}:{line}: {name} takes {n} positional parameters (make those after the fifth "
           f"keyword-only with `*`, or pass a spec object)"
           for p in _sources() for line, name, n in too_many_positional(p.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


def test_the_positional_rule_counts_what_a_caller_lines_up():
    source = '''
def six(a, b, c, d, e, f): ...
def five_then_keywords(a, b, c, d, e, *, f, g=1): ...
def star_args(a, b, c, d, e, *rest, **kw): ...
def _private(a, b, c, d, e, f): ...
class Public:
    def method(self, a, b, c, d, e): ...
    def wide(self, a, b, c, d, e, f): ...
    @classmethod
    def build(cls, a, b, c, d, e): ...
    @staticmethod
    def helper(a, b, c, d, e, f): ...
    def __init__(self, a, b, c, d, e, f, g): ...
class _Hidden:
    def wide(self, a, b, c, d, e, f): ...
def outer():
    def inner(a, b, c, d, e, f): ...
class _Branch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, result, a, b, scale, p): ...
@triton.jit
def _kernel(x, y, z, m, n, k, BLOCK: tl.constexpr): ...
if HAS_TRITON:
    def _guarded(a, b, c, d, e, f): ...
@dataclass
class Wide:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int = 0
    SHARED: ClassVar[int] = 1
@dataclasses.dataclass(frozen=True)
class Marked:
    a: int
    b: int
    c: int
    d: int
    e: int
    _: KW_ONLY
    f: int = 0
@dataclass(kw_only=True)
class Named:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int = field(init=False)
'''
    assert too_many_positional(source) == [(2, "six", 6), (5, "_private", 6), (8, "Public.wide", 6),
                                           (12, "Public.helper", 6), (13, "Public.__init__", 7),
                                           (15, "_Hidden.wide", 6), (17, "outer.inner", 6), (24, "_guarded", 6),
                                           (26, "Wide.__init__", 6)]


def defined_classes(paths: list[Path]) -> set[str]:
    return {n.name for p in paths for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, ast.ClassDef)}


def too_many_positional_arguments(source: str, classes: set[str],
                                  limit: int = MAX_POSITIONAL) -> list[tuple[int, str, int]]:
    """(line, class, positional arguments) of each call of one of `classes` (by name, or as `module.Name`) passing
    more than `limit` arguments by position: a dataclass's generated __init__ is a function too, and a view built
    from fifteen values in a row is one swap away from showing a pid as a step. A `*args` counts as one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in classes and len(node.args) > limit:
                found.append((node.lineno, name, len(node.args)))
    return found


def test_no_class_of_ours_is_built_from_more_than_five_positional_arguments():
    """Issue 21's calls of seven or more positional arguments were mostly constructors (JobView from 15 values,
    AttemptView 15, Parity 12): the dataclasses take the rest by keyword now, and no call here or in the tests and
    benchmarks lines up more than five."""
    sources = _sources()
    classes = defined_classes(sources)
    callers = sources + sorted(p for root in ("tests", "bench") for p in (REPO / root).rglob("*.py"))
    bad = [f"{p.relative_to(REPO)}:{line}: {name}(...) with {n} positional arguments: name them (and make the "
           f"dataclass `kw_only=True`, or put `_: KW_ONLY` after its fifth field)"
           for p in callers for line, name, n in too_many_positional_arguments(p.read_text(encoding="utf-8"),
                                                                                 classes)]
    assert not bad, "\n".join(bad)


def test_the_constructor_rule_counts_positional_arguments_of_our_classes_only():
    source = """
JobView(1, "a", kind, "/o", status, "local")
registry.JobView(1, "a", kind, "/o", status, launcher="local")
records.AttemptView(1, status, "local", "h", 2, 1, {})
Parity(*values)
dict(a, b, c, d, e, f)
"""
    assert too_many_positional_arguments(source, {"JobView", "AttemptView", "Parity"}) == [
        (2, "JobView", 6), (4, "AttemptView", 7)]


def test_the_dataclass_rule_counts_what_the_generated_init_takes_by_position():
    """The static count agrees with what dataclasses generate, on the views built from the most values."""
    from dataclasses import fields

    from medscale.export.merge import Parity
    from medscale.registry.records import AttemptView, JobSpec, JobView

    for cls in (JobView, AttemptView, Parity, JobSpec):
        node = next(n for n in ast.walk(ast.parse(Path(sys.modules[cls.__module__].__file__).read_text()))
                    if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        assert _dataclass_positional(node) == len([f for f in fields(cls) if f.init and not f.kw_only])


# --------------------------------------------------------------------------- statuses are one enum

STATUS_VALUES = {s.value for s in (*JobStatus, *AttemptStatus)}
KIND_VALUES = {k.value for k in JobKind}
ROLE_VALUES = {r.value for r in ResultRole}


def bare_literals(source: str, values: set[str], name: str, *, named_compare: bool) -> list[tuple[int, str]]:
    """(line, value) of each of `values` written as a bare string where it is compared (`==`, `in (...)`; with
    `named_compare` only against something whose name ends in `name`), assigned to a name ending in `name` (a
    default included) or passed as `name=`: each must be the enum's member."""
    def literals(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values:
            yield node
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for e in node.elts:
                yield from literals(e)

    def named(target) -> bool:
        """`kind`, `job.kind`, `data["kind"]` and `data.get("kind")` are named `kind`."""
        if isinstance(target, ast.Subscript):
            target = target.slice
        elif isinstance(target, ast.Call) and getattr(target.func, "attr", "") == "get" and target.args:
            target = target.args[0]
        if isinstance(target, ast.Constant):
            return isinstance(target.value, str) and target.value.endswith(name)
        return (target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")).endswith(name)

    found = []
    for node in ast.walk(ast.parse(source)):
        values_at = []
        if isinstance(node, ast.Compare) and (not named_compare or any(map(named, [node.left, *node.comparators]))):
            values_at = [node.left, *node.comparators]
        elif isinstance(node, ast.Assign) and any(named(t) for t in node.targets):
            values_at = [node.value]
        elif isinstance(node, ast.AnnAssign) and node.value is not None and named(node.target):
            values_at = [node.value]
        elif isinstance(node, ast.keyword) and node.arg == name:
            values_at = [node.value]
        found += [(n.lineno, n.value) for v in values_at for n in literals(v)]
    return sorted(found)


def bare_statuses(source: str) -> list[tuple[int, str]]:
    """Statuses: their values are no other word, so every comparison counts."""
    return bare_literals(source, STATUS_VALUES, "status", named_compare=False)


def bare_kinds(source: str) -> list[tuple[int, str]]:
    """Job kinds: "train" and "eval" are ordinary words too (a split, a mode), so only comparisons with a kind."""
    return bare_literals(source, KIND_VALUES, "kind", named_compare=True)


def test_no_module_compares_or_assigns_a_bare_status_string():
    bad = [f"{p.relative_to(REPO)}:{line}: {value!r}: use medscale.status's member"
           for p in _sources() if p != REPO / "medscale" / "status.py"
           for line, value in bare_statuses(p.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


def test_no_module_compares_or_assigns_a_bare_job_kind_string():
    bad = [f"{p.relative_to(REPO)}:{line}: {value!r}: use medscale.jobkind.JobKind's member"
           for p in _sources() if p != REPO / "medscale" / "jobkind.py"
           for line, value in bare_kinds(p.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


def test_no_module_compares_or_assigns_a_bare_result_role_string():
    """A stored result's role ("base" and "model" are ordinary words too: only comparisons with a role count)."""
    bad = [f"{p.relative_to(REPO)}:{line}: {value!r}: use medscale.verdicts.ResultRole's member"
           for p in _sources()
           for line, value in bare_literals(p.read_text(encoding="utf-8"), ROLE_VALUES, "role", named_compare=True)]
    assert not bad, "\n".join(bad)
    found = bare_literals('if r.role == "base" or mode == "model": ...\nrow(role="tuned")\n', ROLE_VALUES, "role",
                          named_compare=True)
    assert found == [(1, "base"), (2, "tuned")]


def test_the_status_check_finds_comparisons_defaults_and_keywords():
    source = """
if job.status not in ("failed", "cancelled"): ...
status: str = "running"
row = Row(status="preempted")
journal = {"stopped_early": why}
if kind == "train": ...
"""
    assert bare_statuses(source) == [(2, "cancelled"), (2, "failed"), (3, "running"), (4, "preempted")]


def test_the_kind_check_finds_kinds_compared_assigned_and_passed_but_not_other_words():
    source = """
if job.kind == "judge": ...
kind: str = "train"
Attempt(spec, kind="eval")
if split == "train" or mode in ("eval", "trial"): ...
if r.kind == "base": ...
if data.get("kind") == "eval" or row["kind"] in ("trial",): ...
"""
    assert bare_kinds(source) == [(2, "judge"), (3, "train"), (4, "eval"), (7, "eval"), (7, "trial")]


def test_preempted_is_one_value_from_the_stop_flag_to_the_exit_code(tmp_path):
    """A stop is an attempt status: the flag says it, the stop exceptions carry it, and the exit code a launcher
    requeues on (75) is read from it, by the local, SLURM and Ray launchers alike."""
    from launcher.slurm import FINAL_CODES
    from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED, STOP_EXIT_CODES, AttemptStopped, StopRequested
    from medscale.jobs.stop import STOPS, StopFlag, stop_code, stop_status

    assert STOPS == (AttemptStatus.PREEMPTED, AttemptStatus.CANCELLED)  # ranked: a cancel wins
    assert STOP_EXIT_CODES == {AttemptStatus.PREEMPTED: EXIT_PREEMPTED, AttemptStatus.CANCELLED: EXIT_CANCELLED}
    for status in STOPS:
        flag = StopFlag()
        flag.code = stop_code(status)
        assert flag.status is status is stop_status(flag.code)
        stopped, at_once = AttemptStopped(flag.status, 3), StopRequested(flag.status, "asked")
        assert stopped.status is at_once.status is status
        assert stopped.exit_code == at_once.exit_code == FINAL_CODES[status] == STOP_EXIT_CODES[status]
    assert StopFlag().status is None and FINAL_CODES[AttemptStatus.COMPLETED] == 0


def _old_journal(out: Path) -> None:
    """A job record as the previous version wrote it (journal format 2): statuses as plain strings, a SLURM job
    preempted after a failed attempt."""
    attempt = {"launcher": "slurm", "host": "node1", "pid": 4242, "fingerprint": "fp", "world_size": 2,
               "resumed_from": None, "recipe_changes": [], "started_at": "2026-12-01T10:00:00"}
    out.mkdir()
    (out / "medscale_job.json").write_text(json.dumps({
        "format": 2, "name": "old", "kind": "train", "output_dir": str(out), "launcher": "slurm",
        "launcher_options": {}, "fingerprint": "fp", "verified_steps": [20],
        "attempts": [{**attempt, "number": 1, "status": "failed", "step": 5, "exit_reason": "OSError: gone",
                      "launcher_ids": {"slurm_job_id": "7"}, "ended_at": "2026-12-01T10:05:00"},
                     {**attempt, "number": 2, "status": "preempted", "step": 20, "exit_reason": "stopped at step 20",
                      "launcher_ids": {"slurm_job_id": "8"}, "ended_at": "2026-12-01T11:00:00"}]}), encoding="utf-8")
    (out / "recipe.resolved.yaml").write_text("name: old\n", encoding="utf-8")


def test_an_old_job_record_loads_its_kind_and_statuses_as_the_enums_and_the_registry_shows_them(tmp_path):
    from medscale.jobs.kinds import JobKind
    from medscale.jobs.record import JOURNAL, read_journal

    out = tmp_path / "old"
    _old_journal(out)
    journal = read_journal(out)
    assert journal.kind is JobKind.TRAIN
    assert [type(a.status) for a in journal.attempts] == [AttemptStatus, AttemptStatus]
    assert [a.status for a in journal.attempts] == [AttemptStatus.FAILED, AttemptStatus.PREEMPTED]
    journal.save()  # written back as the same plain values
    written = json.loads((out / JOURNAL).read_text())
    assert (written["kind"], [a["status"] for a in written["attempts"]]) == ("train", ["failed", "preempted"])

    r = cli("jobs", "sync", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    shown = json.loads(cli("jobs", "show", "old", "--json").stdout)
    assert shown["status"] == JobStatus.PREEMPTED
    assert [a["status"] for a in shown["attempt_list"]] == ["failed", "preempted"]


# --------------------------------------------------------------------------- read by name, not by position

POSITIONAL_NAMES = ("overrides", "cells")


def read_by_position(source: str) -> list[tuple[int, str]]:
    """(line, expression) of each `overrides[-2:]`, `overrides[:-2]` or `cells[6]`: a list of overrides or a table
    row read at a fixed place, which silently reads the wrong item once the list grows. Name the part instead (a
    field, or a named index such as LeaderBoard.VERSUS)."""
    def constant(node) -> bool:
        return isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp) and isinstance(node.operand,
                                                                                                ast.Constant))

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Subscript):
            continue
        target = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        where = node.slice
        fixed = constant(where) or isinstance(where, ast.Slice) and any(
            b is not None and constant(b) for b in (where.lower, where.upper))
        if target.endswith(POSITIONAL_NAMES) and fixed:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_reads_overrides_or_table_cells_by_position():
    bad = [f"{p.relative_to(REPO)}:{line}: {expr}: name what it reads" for p in _sources()
           for line, expr in read_by_position(p.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


def test_the_position_check_finds_fixed_indexes_and_slices_only():
    source = """
a = t.overrides[:-2]
b = cells[6]
c = overrides[:i]
d = cells[board.VERSUS]
e = trial_overrides[-1]
"""
    assert read_by_position(source) == [(2, "t.overrides[:-2]"), (3, "cells[6]"), (6, "trial_overrides[-1]")]


def world_size_products(source: str) -> list[int]:
    """Lines that multiply a recipe's dist.num_processes by its dist.num_machines: the world size a recipe asks
    for is medscale.dist's `DistContext.planned`, worked out in that one place."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
            and {"num_processes", "num_machines"} <= {getattr(n, "attr", "") for n in ast.walk(node)}]


def test_the_world_size_is_worked_out_in_the_dist_context_only():
    bad = [f"{p.relative_to(REPO)}:{line}: use DistContext.planned(recipe.dist).world_size" for p in _sources()
           if p != REPO / "medscale" / "dist.py" for line in world_size_products(p.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)
    source = "a = b * r.dist.num_processes * r.dist.num_machines\nc = r.dist.num_processes + r.dist.num_machines\n"
    assert world_size_products(source) == [1]


def test_sweep_dry_run_lists_what_each_trial_asks_and_the_trial_adds_only_its_name_and_folder(tmp_path):
    """`sweep run --dry-run` shows each trial's own overrides (the sweep's, its axes', the command line's), read by
    name from the plan: not the name and output dir every trial gets, and not one of its own dropped."""
    from medscale.sweep.spec import load_spec, plan_sweep

    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: typed\nrecipes: [tiny-demo]\ngrid:\n  lr: {low: {train.learning_rate: 1.0e-5}, "
                    "high: {train.learning_rate: 1.0e-4}}\noverrides: {train.max_steps: 2}\n", encoding="utf-8")
    r = cli("sweep", "run", str(spec), "train.save_steps=1", "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    shown = {t["label"]: t["overrides"] for t in json.loads(r.stdout)["trials"]}
    assert shown == {"low": ["train.max_steps=2", "train.learning_rate=1e-05", "train.save_steps=1"],
                     "high": ["train.max_steps=2", "train.learning_rate=0.0001", "train.save_steps=1"]}
    for t in plan_sweep(*load_spec(str(spec)), extra=["train.save_steps=1"]).trials:
        assert t.overrides == [*t.asked, f"name=typed.{t.label}", f"train.output_dir={t.output_dir}"]


# --------------------------------------------------------------------------- a registry row's spec is read typed

def _old_rows(reg, out: Path) -> dict[str, int]:
    """Rows as the previous version wrote them: a training recipe with `data.packing` (before data.batching) and a
    key this version dropped; an evaluation row of a recipe (before evaluations had a spec); a row synced without its
    recipe. Beside them, this version's eval and judge job files."""
    from medscale.eval.spec import EvalSpec
    from medscale.judge.spec import JudgeSpec
    from medscale.recipe import load_recipe
    from medscale.registry import JobSpec

    old = yaml.safe_load(load_recipe("tiny-demo").to_yaml())
    old["data"].pop("batching")
    old["data"]["packing"] = True
    old["train"].update(save_total_limit=3, keep_best_checkpoint=False, output_dir="runs/old", gone_since=1)
    old["description"] = "trained by the previous version"
    old_yaml = yaml.safe_dump(old)
    folder = {"output_dir": str(out / "new")}
    evaluation = EvalSpec.validated({"name": "e", "model": str(out / "model"), "benchmarks": ["b"], "train": folder},
                                    "test")
    judgement = JudgeSpec.validated({"name": "j", "models": ["/a", "/b"], "train": folder}, "test")
    rows = {"train": JobSpec("old", str(out / "old"), "local", old_yaml, "fp"),
            "old-eval": JobSpec("old-eval", str(out / "old-eval"), "local", old_yaml, "fp", kind=JobKind.EVAL),
            "eval": JobSpec("e", str(out / "e"), "local", evaluation.to_yaml(), "fp", kind=JobKind.EVAL),
            "judge": JobSpec("j", str(out / "j"), "local", judgement.to_yaml(), "fp", kind=JobKind.JUDGE),
            "synced": JobSpec("bare", str(out / "bare"), "local", "", "fp")}
    return {k: reg.register(spec) for k, spec in rows.items()}


def test_a_registry_row_reads_as_the_typed_spec_of_its_kind_old_rows_too(tmp_path):
    """`jobs gc` (retention), `jobs resume` (the recorded output dir) and the report (base model, description) read a
    row's YAML through one reader that returns the kind's typed spec: old rows still read, as the job saved them."""
    from medscale.eval.spec import EvalSpec
    from medscale.jobs.kinds import recorded_spec
    from medscale.jobs.ops import _retention
    from medscale.judge.spec import JudgeSpec
    from medscale.recipe import Recipe
    from medscale.registry import Registry

    with Registry() as reg:
        ids = _old_rows(reg, tmp_path)
        spec = {k: reg.job_spec(i) for k, i in ids.items()}
        view = reg.job(ids["train"])
    old = recorded_spec(spec["train"])
    assert isinstance(old, Recipe) and recorded_spec(view) == old
    assert (old.data.batching, old.train.output_dir, old.description) == ("packed", "runs/old",
                                                                          "trained by the previous version")
    assert isinstance(recorded_spec(spec["old-eval"]), Recipe)
    assert isinstance(recorded_spec(spec["eval"]), EvalSpec) and isinstance(recorded_spec(spec["judge"]), JudgeSpec)
    assert recorded_spec(spec["synced"]) is None
    assert [_retention(spec[k]) for k in ("train", "eval", "judge", "synced")] == [(3, False), (None, True),
                                                                                  (None, True), (None, True)]


def test_report_of_an_evaluation_job_says_it_logged_nothing_instead_of_crashing(tmp_path):
    """The report read a row's recipe as a dict, `model.path` included: an evaluation's job file names its model as
    a string, so `medscale report EVAL_JOB` died with AttributeError instead of saying what is missing."""
    from medscale.registry import Registry

    with Registry() as reg:
        _old_rows(reg, tmp_path)
    r = cli("report", "e")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no run logged any metric yet" in r.stderr
