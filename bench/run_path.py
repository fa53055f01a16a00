"""Which medscale modules a training run enters on its way to `trainer.train()`, stage by stage (issue 21: "from
run() to trainer.train() the code reads top to bottom: no module is entered twice").

    python bench/run_path.py            # run(recipe) called directly (it decides for itself)
    python bench/run_path.py --from cli # `medscale train`: run() as the local launcher starts it, and the whole
                                        # command (the launcher's pre-flight included)

Runs the tiny demo (one step, in a throwaway MEDSCALE_HOME) under sys.setprofile, following the call stack of our
modules (medscale, launcher). A module is entered when a call reaches it while none of its frames is on the stack,
left when its last frame returns; each call site enters once (a loop is one entry, as the code reads). The drivers
(DRIVERS: run(), the CLI command, the local launcher) are lists of stages: what one of them enters, with everything
beneath it, is a stage. Printed: the stages in order with the modules each entered, and the "returns" (a stage
entering a module an earlier stage had entered: bouncing between stages), for stage modules and for all modules
apart: the vocabulary modules (LEAVES, each with its reason) may be entered by several stages. "Nested" counts a
module entered again within one stage after another (a stage's own helpers), shown, not a return. Also how often
the whole run called the memory plan, pre-flight, the tokenizing pass and the data reader. Module bodies run by an
import are not calls and are left out. The tiny model is built before tracing: a first run's one-off.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

OURS = ("medscale", "launcher")
# The modules that sequence the stages (each a list of calls, read top to bottom): entering one is reading the list,
# not a stage of the run. The CLI command, the local launcher (prepare -> submit -> wait) and run() itself.
DRIVERS = ("medscale.train.run", "medscale.cli.train", "launcher.local")
# The vocabulary every stage speaks (issue 21 allows these to be entered again): a stage reads them, never decides
# through them. Each name covers its submodules.
LEAVES = {
    "medscale": "the root: medscale_home() and the logging set-up",
    "medscale.settings": "every MEDSCALE_* variable, read typed where it is needed",
    "medscale.errors": "exit codes and the UserError family",
    "medscale.paths": "shipped files, temporary folders, file modes",
    "medscale.status": "the job and attempt status enums",
    "medscale.dist": "the dist context (ranks, world size)",
    "medscale.recipe": "the recipe's typed sections and their methods (fingerprint, pack_budget, ...)",
    "medscale.jobs.stop": "the process-wide stop flag, read wherever long work can stop",
    "medscale.train.dist": "the collectives: the points where every rank agrees (run()'s and each step's)",
    "medscale.jobs.runplan": "the RunPlan: the typed decisions each stage is handed, read as the recipe's sections are",
    "medscale.jobs.record": "the output dir's files and atomic writes, which the plan, resume and the attempt each use",
    "medscale.registry.records": "the registry's typed rows and its clock (utcnow), the launch stamp's too",
}
# The decisions issue 21 wants made once per run, and the passes over the data: each call counted, site or not.
COUNTED = {"medscale.plan": ("plan", "decide", "recompute_layers", "token_budget", "fit_problems"),
           "medscale.preflight": ("check",),
           "medscale.data.pipeline": ("build_datasets", "_build"),
           "medscale.data.sources": ("iter_conversations",),
           "medscale.model.tokenizer": ("load_tokenizer",)}


def is_leaf(module: str) -> bool:
    """A LEAVES module or one of its submodules (the root's submodules are everything: not those)."""
    return module in LEAVES or any(module.startswith(leaf + ".") for leaf in LEAVES if leaf != "medscale")


class ModulePath:
    """Our modules as the path enters them, stage by stage, until a Trainer's `train` is called.

    A module is entered when a call reaches it while none of its frames is on the stack (a call from inside it is
    the same visit), and left when its last frame returns; each call site enters once (a loop calling the same
    function is one entry, as the code reads; so is a generator resumed). A stage is a module a driver (DRIVERS)
    enters, with everything entered beneath it; consecutive entries of one module are one stage. A "return" is a
    stage entering a module an earlier stage had entered (a stage calling back into another's module); entering a
    module again within one stage, after another, is counted apart ("nested")."""

    def __init__(self, from_run: bool):
        self.started = not from_run  # from_run: the path starts where train/run.py's run() is called
        self.stages: list[list[str]] = []  # per stage, the modules entered (consecutive repeats collapsed)
        self.sites: set = set()
        self.calls: dict[str, int] = {}
        self._generators: dict[int, object] = {}
        self._active: dict[int, str] = {}  # our frames on the stack -> their module
        self._depth: dict[str, int] = {}
        self._inner = 0  # our frames on the stack outside DRIVERS: none, and a module entered starts a stage
        self._imports: set[int] = set()  # module bodies running (an import): not the path
        self.done = False

    def __call__(self, frame, event, arg):
        if event == "return":
            self._imports.discard(id(frame))
            mod = self._active.pop(id(frame), None)
            if mod is not None:
                self._depth[mod] -= 1
                self._inner -= mod not in DRIVERS
            return
        if event != "call":
            return
        code = frame.f_code
        mod = frame.f_globals.get("__name__", "")
        if code.co_name in COUNTED.get(mod, ()) and self._first_entry(frame):
            name = f"{mod}.{code.co_name}"
            self.calls[name] = self.calls.get(name, 0) + 1
        if self.done:
            return
        if not self.started:
            if code.co_name != "run" or mod != "medscale.train.run":
                return
            self.started = True
        if code.co_name == "train" and "self" in frame.f_locals and \
                type(frame.f_locals["self"]).__mro__[-2].__name__ == "Trainer":
            self.done = True
            return
        if code.co_name == "<module>":
            self._imports.add(id(frame))
            return
        if self._imports or mod.split(".")[0] not in OURS or mod == __name__:
            return
        entering = self._depth.get(mod, 0) == 0
        top = mod not in DRIVERS and self._inner == 0
        self._active[id(frame)] = mod
        self._depth[mod] = self._depth.get(mod, 0) + 1
        self._inner += mod not in DRIVERS
        site = (frame.f_back and frame.f_back.f_code, frame.f_back and frame.f_back.f_lineno, code)
        if not entering or mod in DRIVERS or site in self.sites:
            return
        self.sites.add(site)
        if top and not (self.stages and self.stages[-1][0] == mod):
            self.stages.append([])
        if self.stages and self.stages[-1][-1:] != [mod]:
            self.stages[-1].append(mod)

    def _first_entry(self, frame) -> bool:
        """False for a generator resumed (each `next` is a profile call too): one pass over a file is one call.
        Generator frames are kept, so their ids are never reused while tracing."""
        if not frame.f_code.co_flags & inspect.CO_GENERATOR:
            return True
        if id(frame) in self._generators:
            return False
        self._generators[id(frame)] = frame
        return True

    def result(self) -> dict:
        first: list[str] = []
        stages_of: dict[str, list[int]] = {}
        nested = 0
        for i, stage in enumerate(self.stages):
            nested += len(stage) - len(set(stage))
            for m in stage:
                if m not in first:
                    first.append(m)
                if i not in stages_of.setdefault(m, []):
                    stages_of[m].append(i)
        again = {m: len(s) - 1 for m, s in stages_of.items() if len(s) > 1}
        stage_again = {m: n for m, n in again.items() if not is_leaf(m)}
        return {"stages": [s[0] for s in self.stages], "modules": len(first), "returns": sum(again.values()),
                "stage_returns": sum(stage_again.values()), "leaf_returns": sum(again.values()) - sum(
                    stage_again.values()), "nested": nested, "entered": first, "re_entered": again,
                "stage_modules": self.stages, "reached_train": self.done, "calls": dict(sorted(self.calls.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="start", choices=("run", "cli"), default="run")
    ap.add_argument("--json", action="store_true", help="one JSON object (with the full sequence)")
    a = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="medscale-run-path-"))
    os.environ["MEDSCALE_HOME"] = str(home)
    overrides = ["train.max_steps=1", "track.swanlab=null", "eval.eval_strategy=no", "train.logging_steps=1"]
    from medscale.model.tiny import ensure_tiny_model
    from medscale.recipe import load_recipe

    recipe = load_recipe("tiny-demo", overrides)
    ensure_tiny_model(recipe.model)
    import medscale.train.run  # noqa: F401  (imported before tracing: imports are not the path)

    tracer, whole = ModulePath(from_run=True), ModulePath(from_run=False)

    def both(frame, event, arg):
        tracer(frame, event, arg)
        whole(frame, event, arg)

    sys.setprofile(both)
    try:
        if a.start == "run":
            from medscale.train.run import run

            run(recipe)
        else:
            from medscale.cli.train import launch_here

            launch_here("tiny-demo", overrides)
    finally:
        sys.setprofile(None)
    r, w = tracer.result(), whole.result()
    if a.json:
        print(json.dumps({"from_run": r, "whole": w}, indent=2))
        return
    where = "run() started directly" if a.start == "run" else "run() started by `medscale train`"
    report(f"{where}, to trainer.train()", r)
    if a.start == "cli":
        report("the whole command, to trainer.train()", w)
    print("calls over the whole run: " + ", ".join(f"{k} {v}" for k, v in w["calls"].items()))
    print("leaves (LEAVES, in this file, each with its reason): " + ", ".join(LEAVES))


def report(title: str, r: dict) -> None:
    print(f"{title}: {len(r['stages'])} stages, {r['modules']} modules; returns: {r['stage_returns']} to a stage "
          f"module, {r['returns']} to any module (leaves included); {r['nested']} nested within a stage")
    if r["re_entered"]:
        print("  entered again by a later stage: " + ", ".join(
            f"{m} +{n}" + (" (leaf)" if is_leaf(m) else "") for m, n in r["re_entered"].items()))
    for i, stage in enumerate(r["stage_modules"], 1):
        print(f"  {i:2d}. {stage[0]}" + (f"  > {' > '.join(stage[1:])}" if stage[1:] else ""))


if __name__ == "__main__":
    main()
