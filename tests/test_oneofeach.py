"""One of each (issue 21, deliverable 4): the registry session is one context manager, and its block lets go of the
database however it ends; one split_think, (think, answer), for training records and generated text alike; one
DistContext, the only reader of the torch.distributed variables."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from conftest import REPO
from medscale.data.chat import split_think
from medscale.data.formats import to_messages
from medscale.registry import Registry


def _held(db: Path) -> bool:
    """Does this process hold the SQLite file (or its WAL) open?"""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd).startswith(str(db)) for fd in fds.iterdir() if fd.is_symlink())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the open files from /proc")
def test_a_registry_block_closes_the_database_even_when_it_raises(tmp_path):
    db = (tmp_path / "registry.db").resolve()
    with Registry(f"sqlite:///{db}") as reg:
        assert reg.jobs() == [] and _held(db)
    assert not _held(db)
    with pytest.raises(KeyError), Registry(f"sqlite:///{db}") as reg:
        reg.jobs()
        raise KeyError("the block failed")
    assert not _held(db)


def test_there_is_one_split_think():
    defs = [f"{p.relative_to(REPO)}" for p in (REPO / "medscale").rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef) and node.name == "split_think"]
    assert defs == ["medscale/data/chat.py"]


def test_split_think_reads_generated_text_think_first():
    assert split_think("<think>\n想一想\n</think>\n\n答案：B") == ("想一想", "答案：B")
    assert split_think("<think></think>答案：B") == (None, "答案：B")
    assert split_think("<think>还在想") == ("还在想", None)  # out of budget mid-thought: no answer
    assert split_think("先排除感染</think>答案：A", opened=True) == ("先排除感染", "答案：A")
    assert split_think("还在想", opened=True) == ("还在想", None)
    assert split_think(" 直接回答 ") == (None, "直接回答")


def test_a_records_leading_think_block_is_its_reasoning_and_a_mention_of_the_tags_is_not():
    def reply(content):
        return to_messages({"instruction": "失眠", "output": content}, "alpaca")[-1]

    assert reply("<think>\n作息\n</think>\n规律作息") == {"role": "assistant", "content": "规律作息",
                                                       "reasoning_content": "作息"}
    assert reply("<think></think>规律作息") == {"role": "assistant", "content": "规律作息"}
    assert reply("写 </think> 标签") == {"role": "assistant", "content": "写 </think> 标签"}
    assert reply("<think>没写完") == {"role": "assistant", "content": "<think>没写完"}


DIST_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


def _environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" or isinstance(node, ast.Name) and \
        node.id == "environ"


def _dist_reads(tree) -> list[int]:
    """Lines reading a torch.distributed variable: environ.get / getenv / environ[...] / `in environ`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            if (isinstance(f, ast.Attribute) and (f.attr == "get" and _environ(f.value) or f.attr == "getenv")
                    and node.args[0].value in DIST_VARS):
                out.append(node.lineno)
        elif (isinstance(node, ast.Subscript) and _environ(node.value) and isinstance(node.ctx, ast.Load)
              and isinstance(node.slice, ast.Constant) and node.slice.value in DIST_VARS):
            out.append(node.lineno)
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and node.left.value in DIST_VARS
              and any(_environ(c) for c in node.comparators)):
            out.append(node.lineno)
    return out


def test_the_dist_variables_are_read_in_one_place():
    files = [p for root in ("medscale", "launcher") for p in (REPO / root).rglob("*.py")
             if p != REPO / "medscale" / "dist.py"]  # DistContext.from_env, the one reader
    reads = {f"{p.relative_to(REPO)}:{line}" for p in files for line in _dist_reads(ast.parse(p.read_text("utf-8")))}
    assert not reads, f"read the dist context through medscale.dist.DistContext: {sorted(reads)}"
    sample = 'import os\nos.environ.get("RANK", "0")\nos.environ["WORLD_SIZE"]\n"LOCAL_RANK" in os.environ\n' \
             'os.getenv("LOCAL_WORLD_SIZE")\nos.environ.get("MASTER_ADDR")\n'
    assert _dist_reads(ast.parse(sample)) == [2, 3, 4, 5]  # the check sees every way of reading one


def test_the_dist_context_of_a_launched_process_and_of_a_plain_one():
    from medscale.dist import DistContext

    ctx = DistContext.from_env({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.procs_per_node, ctx.nodes) == (5, 1, 8, 4, 2)
    assert ctx.launched and not ctx.is_main
    alone = DistContext.from_env({})
    assert alone == DistContext() and alone.is_main and alone.nodes == 1 and not alone.launched
    assert DistContext.from_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}).procs_per_node == 2
    with pytest.raises(ValueError, match=r"\$RANK='x'"):
        DistContext.from_env({"RANK": "x"})


def test_the_planned_world_of_a_recipe():
    from medscale.dist import DistContext
    from medscale.recipe import load_recipe

    r = load_recipe("tiny-demo", ["dist.num_processes=2", "dist.num_machines=3", "train.effective_batch_size=null"])
    plan = DistContext.planned(r.dist)
    assert (plan.world_size, plan.procs_per_node, plan.nodes, plan.is_main) == (6, 2, 3, True)
