"""Registry rows read through typed objects (issue 21, deliverable 3): a stored result's `figures` JSON is
`eval.result.ResultFigures` both ways, in the layout rows already have (no migration), and a sweep's ranking metric
is a `sweep.metric.SweepMetric` from its definition to the leaderboard, read back from the definition the registry
kept, an older version's included. Hand-made registry rows: no model, no training."""
from __future__ import annotations

import json

import pytest

from conftest import cli
from medscale.eval.result import BenchResult, Outcome, ResultFigures, SubjectScore
from medscale.eval.stored import as_bench, figures
from medscale.registry import JobSpec, Registry, ResultInfo, SweepInfo
from medscale.verdicts import Counts

# a result's figures as the registry already holds them (eval.run.result_row's layout before they were typed)
STORED = {"correct": 3, "skipped": 1, "unparseable": 0, "source": "/data/mcq.jsonl", "split": "test", "total": 4,
          "multi_answer": 0, "language": "en", "questions_per_s": 2.5,
          "subjects": [{"subject": "cardio", "n": 4, "correct": 3, "acc": 0.75, "ci_low": 0.3, "ci_high": 0.95}],
          "sampled": None, "generation": None,
          "degeneration": {"n": 4, "looping": 1, "unclosed_think": 0, "empty_answer": 0, "wrong_language": 0,
                           "length_off": None, "degenerate": 1, "flags": [True, False, False, False],
                           "chars": [900, 10, 12, 11]}}


def _outcomes(right: list[bool]) -> list[Outcome]:
    return [Outcome(id=f"q{i}", subject="cardio", chosen=["A" if ok else "B"], correct=["A"], ok=ok)
            for i, ok in enumerate(right)]


def test_a_results_figures_are_written_in_the_rows_layout_and_read_back_typed():
    result = BenchResult(benchmark="mcq", fingerprint="fp", language="en", mode="generate", shots=0, n=4, correct=3,
                         acc=0.75, ci_low=0.3, ci_high=0.95, skipped=1, source="/data/mcq.jsonl", split="test",
                         total=4, questions_per_s=2.5,
                         subjects=[SubjectScore(subject="cardio", n=4, correct=3, acc=0.75, ci_low=0.3, ci_high=0.95)],
                         degeneration=Counts.model_validate(STORED["degeneration"]),
                         outcomes=_outcomes([True, True, True, False]))
    assert ResultFigures.of(result).model_dump(mode="json") == STORED  # the row's shape is unchanged
    from medscale.eval.run import result_row

    row = result_row(result, model="m", base="/b", adapter=None, role="tuned")
    assert row.figures == STORED
    read = figures(_view(row))
    assert isinstance(read.degeneration, Counts) and read.degeneration.flags == [True, False, False, False]
    assert isinstance(read.subjects[0], SubjectScore) and read.language == "en"
    back = as_bench(_view(row))
    assert (back.correct, back.language, back.degeneration, back.source) == (3, "en", result.degeneration,
                                                                             "/data/mcq.jsonl")


def test_figures_an_older_version_stored_read_with_their_defaults():
    """Revision 0003's rows may hold `{}`; a key this version no longer writes is ignored."""
    old = figures(_view(ResultInfo(model="m", base_path="/b", benchmark="mcq", fingerprint="fp", mode="letter", n=1,
                                   figures={})))
    assert (old.correct, old.language, old.degeneration, old.sampled) == (0, "zh", None, None)
    gone = figures(_view(ResultInfo(model="m", base_path="/b", benchmark="mcq", fingerprint="fp", mode="letter", n=1,
                                    figures={"correct": 1, "retired_key": 7})))
    assert gone.correct == 1 and not hasattr(gone, "retired_key")


def _view(row: ResultInfo):
    from medscale.registry import ResultView

    return ResultView(**vars(row))


# --------------------------------------------------------------------------- the sweep's metric


def test_a_sweep_files_metric_is_typed_and_kept_as_its_name(tmp_path):
    from medscale.cli.sweep import _plan
    from medscale.sweep.metric import MetricKind, SweepMetric
    from medscale.sweep.spec import SweepError, parse_spec

    spec = parse_spec({"name": "s", "recipes": ["tiny-demo"], "metric": "control"})
    assert spec.metric == SweepMetric(name="control") and spec.metric.kind is MetricKind.CONTROL
    assert (spec.metric.lower_is_better, spec.metric.mode) == (True, "min")
    bench = SweepMetric(name="mcq")
    assert (bench.kind, bench.mode, bench.heading) == (MetricKind.BENCHMARK, "max", "mcq acc %")
    assert bench.measures("/data/eval/mcq.jsonl") and bench.measures("mcq") and not bench.measures("mcq2")
    with pytest.raises(SweepError, match="metric: empty"):
        parse_spec({"name": "s", "recipes": ["tiny-demo"], "metric": ""})
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nrecipes: [tiny-demo]\nmetric: control\nbases: [{label: b, path: /m/b}]\n",
                 encoding="utf-8")
    plan = _plan(str(f), [], [], None, None)
    assert "metric: control\n" in plan.definition  # what the registry keeps
    # a cell and a base as the registry keeps them: the layout rows already hold
    (trial,) = plan.trials
    assert list(trial.cell()) == ["label", "recipe", "overrides", "labels", "note", "base"]
    assert [b.to_dict() for b in plan.bases] == [{"label": "b", "path": "/m/b"}]


def test_a_sweep_rows_cells_and_bases_read_typed_an_older_partial_cell_too():
    from medscale.registry import SweepBase, SweepView, TrialCell

    old = TrialCell.of({"base": "/m/b", "retired_key": 1})
    assert (old.base, old.note, old.label, old.overrides) == ("/m/b", None, "", [])
    view = SweepView(name="s", definition_yaml="", bases=[{"label": "b", "path": "/m/b"}])
    assert view.base_models() == [SweepBase("b", "/m/b")] and view.to_dict()["bases"] == [{"label": "b", "path": "/m/b"}]


@pytest.fixture
def reg(medscale_home, monkeypatch):
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", f"sqlite:///{medscale_home}/registry.db")
    medscale_home.mkdir(parents=True, exist_ok=True)
    with Registry() as r:
        yield r


def _sweep(reg: Registry, tmp_path, definition: str) -> None:
    """Two trials scored on mcq (3/4 and 1/4) and their base measured once (2/4)."""
    base = str(tmp_path / "base")
    sweep = reg.upsert_sweep(SweepInfo("s", definition, [], [{"label": "base", "path": base}]))
    for label, right in (("low", [True, False, False, False]), ("high", [True, True, True, False])):
        out = tmp_path / label
        job = reg.add_trial(sweep, JobSpec(f"s.{label}", str(out), "local", "", "fp", kind="trial"), label,
                            {"base": base})
        reg.record_result(_row(f"s.{label}", base, right, role="tuned"), job)
    reg.record_result(_row("base", base, [True, True, False, False], role="base"))


def _row(model: str, base: str, right: list[bool], *, role: str) -> ResultInfo:
    return ResultInfo(model=model, base_path=base, benchmark="/data/eval/mcq.jsonl", fingerprint="qfp",
                      mode="letter", n=len(right), role=role, accuracy=sum(right) / len(right), ci_low=0.1,
                      ci_high=0.9, figures={"correct": sum(right)},
                      outcomes=[o.model_dump() for o in _outcomes(right)])


def test_the_leaderboard_ranks_by_the_metric_an_older_definition_names(reg, tmp_path):
    """The definition as an older version wrote it (a key this one does not know): its `metric` still ranks."""
    _sweep(reg, tmp_path, "name: s\nretired_key: 1\nmetric: mcq\n")
    r = cli("sweep", "show", "s", "--json")
    assert r.returncode == 0, r.stderr
    board = json.loads(r.stdout)
    assert (board["metric"], board["lower_is_better"]) == ("mcq", False)
    assert [(row["label"], row["rank"]) for row in board["rows"]] == [("high", 1), ("base", 2), ("low", 3)]
    shown = cli("sweep", "show", "s").stdout
    assert "s ranked by mcq (higher is better)" in shown and "mcq acc %" in shown
    # --metric names another; a definition that no longer reads, or names none, ranks by eval loss
    assert json.loads(cli("sweep", "show", "s", "--metric", "control", "--json").stdout)["metric"] == "control"
    for definition in ("name: s\n", "name: [s\n", "name: s\nmetric: 5\n"):
        reg.upsert_sweep(SweepInfo("s", definition, [], [{"label": "base", "path": str(tmp_path / "base")}]))
        assert json.loads(cli("sweep", "show", "s", "--json").stdout)["metric"] == "eval_loss", definition


def test_a_results_role_is_the_enum_from_the_writer_to_the_row_and_back(reg, tmp_path):
    """Stored as the plain value (rows already hold tuned / base / model: no migration), read back as the member."""
    from sqlalchemy import text

    from medscale.verdicts import ResultRole

    base = str(tmp_path / "base")
    rid = reg.record_result(_row("base", base, [True, False], role=ResultRole.BASE))
    (read,) = reg.results(ids=[rid])
    assert read.role is ResultRole.BASE and f"{read.role}" == "base"
    with reg.engine.connect() as c:
        assert c.execute(text("SELECT role FROM results")).scalar_one() == "base"
    with pytest.raises(ValueError, match="'judge' is not a valid ResultRole"):
        _row("x", base, [True], role="judge")
