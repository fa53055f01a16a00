"""One of each (issue 21, deliverable 4): the registry session is one context manager, and its block lets go of the
database however it ends; one split_think, (think, answer), for training records and generated text alike."""
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
