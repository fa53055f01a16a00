"""Which medscale modules a training run enters on its way to `trainer.train()`, in order (issue 21: "from run() to
trainer.train() the code reads top to bottom").

    python bench/run_path.py            # run(recipe) called directly (it decides for itself)
    python bench/run_path.py --from cli # `medscale train`: run() as the local launcher starts it, and the whole
                                        # command (the launcher's pre-flight included)

Runs the tiny demo (one step, in a throwaway MEDSCALE_HOME) under sys.setprofile. Every Python call into a medscale
or launcher module is one mark, the first time its call site makes it (a loop over records calling the same function
is one mark, as the code reads); consecutive marks within one module collapse. Printed: the modules in the order first
entered, how many times the path came back into a module it had already left (a "return"), and how often the whole
run called the memory plan, pre-flight, the tokenizing pass and the data reader. Module bodies run by
an import are not calls and are left out. The tiny model is built before tracing: building it is a first run's
one-off, not a decision of the run.
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
# The decisions issue 21 wants made once per run, and the passes over the data: each call counted, site or not.
COUNTED = {"medscale.plan": ("plan", "decide", "recompute_layers", "token_budget", "fit_problems"),
           "medscale.preflight": ("check",),
           "medscale.data.pipeline": ("build_datasets", "_build"),
           "medscale.data.sources": ("iter_conversations",),
           "medscale.model.load": ("load_tokenizer",)}


class ModulePath:
    """The sequence of our modules entered (consecutive repeats collapsed) until a Trainer's `train` is called."""

    def __init__(self, from_run: bool):
        self.started = not from_run  # from_run: the path starts where train/run.py's run() is called
        self.sequence: list[str] = []
        self.sites: set = set()
        self.calls: dict[str, int] = {}
        self._generators: dict[int, object] = {}
        self.done = False

    def __call__(self, frame, event, arg):
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
            return
        if mod.split(".")[0] not in OURS or mod == __name__:
            return
        site = (frame.f_back and frame.f_back.f_code, frame.f_back and frame.f_back.f_lineno, code)
        if site in self.sites:
            return
        self.sites.add(site)
        if not self.sequence or self.sequence[-1] != mod:
            self.sequence.append(mod)

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
        for m in self.sequence:
            if m not in first:
                first.append(m)
        returns = len(self.sequence) - len(first)
        again = {m: self.sequence.count(m) - 1 for m in first if self.sequence.count(m) > 1}
        return {"modules": len(first), "returns": returns, "entered": first, "re_entered": again,
                "sequence": self.sequence, "reached_train": self.done, "calls": dict(sorted(self.calls.items()))}


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
    print(f"{where}, to trainer.train(): {r['modules']} modules entered, {r['returns']} returns to a module left "
          f"earlier")
    for i, m in enumerate(r["entered"], 1):
        print(f"  {i:2d}. {m}" + (f"  (+{r['re_entered'][m]} returns)" if m in r["re_entered"] else ""))
    if a.start == "cli":
        print(f"the whole command, to trainer.train(): {w['modules']} modules entered, {w['returns']} returns")
    print("calls over the whole run: " + ", ".join(f"{k} {v}" for k, v in w["calls"].items()))


if __name__ == "__main__":
    main()
