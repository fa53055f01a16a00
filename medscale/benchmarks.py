"""The built-in benchmarks, listed once: name -> where its files live under the eval data dir, its language, and
where to get it. The recipe checks `eval.benchmarks` names against it, evaluation loads from it, `medscale eval
--help` and README's table show it, and `medscale eval` without --bench runs its Chinese sets. A leaf below the
recipe and the evaluation, so both read the one list."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    path: str  # under the eval data dir
    language: str  # "zh" | "en": picks the instruction language
    origin: str  # where to get it, for the error when it is missing


BUILTINS: dict[str, Builtin] = {
    "cmmlu-med": Builtin("cmmlu_medical", "zh", "haonan-li/CMMLU data/{test,dev}/<medical subject>.csv"),
    "ceval-med": Builtin("ceval_medical", "zh", "ceval/ceval-exam basic_medicine, clinical_medicine, physician "
                                                "(val rows, then any test rows, which are not scored; one .jsonl "
                                                "per subject)"),
    "medqa-zh": Builtin("medllm_qa_benchmark/zh/medqa_zh.jsonl", "zh", "aistairc/medLLM_QA_benchmark data/zh"),
    "cmexam": Builtin("medllm_qa_benchmark/zh/cmexam.jsonl", "zh", "aistairc/medLLM_QA_benchmark data/zh"),
    "medqa-en": Builtin("medllm_qa_benchmark/en/medqa_en.jsonl", "en", "aistairc/medLLM_QA_benchmark data/en"),
    "mmlu-med": Builtin("medllm_qa_benchmark/en/mmlu_en_medical.jsonl", "en", "aistairc/medLLM_QA_benchmark data/en"),
}
MEDICAL_ZH = tuple(name for name, b in BUILTINS.items() if b.language == "zh")  # `medscale eval` without --bench


@dataclass(frozen=True)
class OpenSet:
    """Open questions for `medscale judge --questions NAME`: answered in words, judged, never scored by letter."""

    path: str  # under the eval data dir; or a file medscale ships under medscale/judge/questions (shipped=True)
    origin: str
    shipped: bool = False


OPEN_SETS: dict[str, OpenSet] = {
    "seed004": OpenSet("seed004.jsonl", "seed 004's standard case (28岁程序员，常年熬夜，头晕目眩，恶心) and nine "
                                        "variations written for medscale", shipped=True),
    "cmb-clin": OpenSet("cmb_clin/CMB-test-qa.json", "FreedomIntelligence/CMB Data/CME-test-qa/CMB-test-qa.json "
                                                     "(CMB-Clin: 74 cases, 208 questions with reference answers)"),
    "huatuo100": OpenSet("huatuogpt2/huatuo100_inst_GPT4.json", "FreedomIntelligence/HuatuoGPT-II "
                                                                 "evaluation/data/huatuo100_inst/GPT4.json (100 "
                                                                 "questions, GPT-4's answers as references)"),
}
