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
from pathlib import Path

from conftest import REPO, cli
from medscale.jobkind import JobKind
from medscale.status import AttemptStatus, JobStatus

MAX_POSITIONAL = 5


def _positional_by_contract(node: ast.FunctionDef, cls: ast.ClassDef | None) -> bool:
    """A Triton kernel (`@triton.jit`) or an autograd Function's forward/backward: Triton's launcher and torch's
    `Function.apply` pass their arguments by position (apply takes no keywords), so they cannot be keyword-only."""
    if any(ast.unparse(d).split("(")[0].endswith("jit") for d in node.decorator_list):
        return True
    return cls is not None and any(ast.unparse(b).endswith("Function") for b in cls.bases)


def too_many_positional(source: str, limit: int = MAX_POSITIONAL) -> list[tuple[int, str, int]]:
    """(line, qualified name, positional parameters) of each function or method over `limit`, public or private,
    nested too: a caller lining up six arguments is one swap away from a wrong run, wherever the function lives.
    `self` / `cls` of a method are not counted, `*args` and keyword-only parameters are not positional parameters a
    caller must line up."""
    found = []

    def visit(node: ast.AST, prefix: str, cls: ast.ClassDef | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
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
'''
    assert too_many_positional(source) == [(2, "six", 6), (5, "_private", 6), (8, "Public.wide", 6),
                                           (12, "Public.helper", 6), (13, "Public.__init__", 7),
                                           (15, "_Hidden.wide", 6), (17, "outer.inner", 6), (24, "_guarded", 6)]


# --------------------------------------------------------------------------- statuses are one enum

STATUS_VALUES = {s.value for s in (*JobStatus, *AttemptStatus)}
KIND_VALUES = {k.value for k in JobKind}


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
