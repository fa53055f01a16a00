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
